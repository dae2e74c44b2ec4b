"""Import TextAttack without network access and keep its files in one cache directory.

``import textattack`` does three things we control here:

* it imports matplotlib, which writes ``~/.config/matplotlib`` unless ``MPLCONFIGDIR`` is set
  (we point it into the cache while TextAttack is imported);
* it reads ``TA_CACHE_DIR`` (default ``~/.cache/textattack``) and, when set, points ``HF_HOME``,
  ``XDG_CACHE_HOME``, ``TFHUB_CACHE_DIR`` and ``PYTORCH_TRANSFORMERS_CACHE`` at it. We set
  ``TA_CACHE_DIR`` to the run's cache, then restore the user's other variables, so TextAttack's
  files land in the run's cache and the user's Hugging Face cache stays where it was;
* once per cache it runs a post-install step that calls ``nltk.download`` for six packages;
* it builds an augmentation recipe that reads the NLTK English stopwords corpus, and fails
  (``LookupError``) when that corpus is missing.

Route taken: while TextAttack is imported (and while recipes are built) ``nltk.download`` is
replaced by :func:`_guarded_download`, which answers from local NLTK data and downloads only
when downloads are allowed (never in offline mode). The stopwords corpus, when no NLTK data
directory has it, is written into ``<cache>/nltk_data`` from the list shipped in
:mod:`asa_plugin.attacks.stopwords`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from asa_plugin.attacks.stopwords import ENGLISH

OFFLINE_ENVS = ("ADVROBUST_OFFLINE", "HF_HUB_OFFLINE")
RESTORED_ENVS = ("HF_HOME", "XDG_CACHE_HOME", "TFHUB_CACHE_DIR", "PYTORCH_TRANSFORMERS_CACHE",
                 "TOKENIZERS_PARALLELISM", "MPLCONFIGDIR")
NLTK_CATEGORIES = ("corpora", "taggers", "tokenizers", "models", "chunkers", "grammars", "misc")


def offline() -> bool:
    """True when the environment forbids downloads (``ADVROBUST_OFFLINE`` or ``HF_HUB_OFFLINE``)."""
    return any(os.environ.get(k, "").strip().lower() in {"1", "true", "yes", "on"} for k in OFFLINE_ENVS)


def nltk_has(resource: str) -> str | None:
    """Local path of NLTK package ``resource`` (e.g. ``wordnet``, ``corpora/stopwords``) or None."""
    import nltk

    names = [resource] if "/" in resource else [f"{c}/{resource}" for c in NLTK_CATEGORIES]
    for name in names:
        for candidate in (name, f"{name}.zip"):
            try:
                return str(nltk.data.find(candidate))
            except LookupError:
                continue
    return None


def add_nltk_dir(path: str | Path) -> None:
    """Search ``path`` first for NLTK data (what ``NLTK_DATA`` does, but after nltk's import)."""
    import nltk

    path = str(path)
    if path not in nltk.data.path:
        nltk.data.path.insert(0, path)


def ensure_stopwords(cache_dir: Path) -> str:
    """Make ``nltk.corpus.stopwords.words('english')`` work; return where the corpus comes from."""
    found = nltk_has("corpora/stopwords")
    if found:
        return found
    root = cache_dir / "nltk_data"
    corpus = root / "corpora" / "stopwords"
    corpus.mkdir(parents=True, exist_ok=True)
    (corpus / "english").write_text("\n".join(ENGLISH) + "\n", encoding="utf-8")
    add_nltk_dir(root)
    return f"{corpus} (written from asa_plugin.attacks.stopwords)"


def _guarded_download(allow: bool, cache_dir: Path):
    import nltk

    real = nltk.download

    def download(info_or_id=None, *args, **kwargs) -> bool:
        if isinstance(info_or_id, str) and nltk_has(info_or_id):
            return True
        if not allow or offline():
            return False
        target = cache_dir / "nltk_data"
        target.mkdir(parents=True, exist_ok=True)
        add_nltk_dir(target)
        kwargs.setdefault("download_dir", str(target))
        kwargs.setdefault("quiet", True)
        return real(info_or_id, *args, **kwargs)

    return real, download


@contextlib.contextmanager
def nltk_downloads(cache_dir: Path, allow: bool) -> Iterator[None]:
    """Inside the block ``nltk.download`` answers from local data; it downloads only if allowed."""
    import nltk

    real, guarded = _guarded_download(allow, cache_dir)
    nltk.download = guarded
    try:
        yield
    finally:
        nltk.download = real


def import_textattack(cache_dir: str | Path, allow_download: bool = True):
    """Import (or re-point) TextAttack so its cache is ``cache_dir``; works offline. Returns the module."""
    cache_dir = Path(cache_dir).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    ensure_stopwords(cache_dir)
    if "textattack" in sys.modules:
        install = sys.modules["textattack.shared.utils.install"]
        install.TEXTATTACK_CACHE_DIR = str(cache_dir)
        return sys.modules["textattack"]
    saved = {k: os.environ.get(k) for k in RESTORED_ENVS}
    os.environ["TA_CACHE_DIR"] = str(cache_dir)
    if "matplotlib" not in sys.modules and not saved["MPLCONFIGDIR"]:
        os.environ["MPLCONFIGDIR"] = str(cache_dir / "matplotlib")  # imported by TextAttack; not ~/.config
    import transformers  # noqa: F401 - before TA_CACHE_DIR's side effects, so its cache paths stay the user's
    try:
        with nltk_downloads(cache_dir, allow_download):
            import textattack
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return textattack
