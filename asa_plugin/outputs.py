"""Outputs that travel: files with the user's usual permissions, and paths without this machine's layout."""

from __future__ import annotations

import os
import re
import site
import sysconfig
from importlib.metadata import packages_distributions, version
from pathlib import Path


def umask_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: 0o666 minus the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def match_umask(root: str | Path) -> None:
    """Give every file under ``root`` (or ``root`` itself) the umask mode; some writers use 0o600."""
    root = Path(root)
    mode = umask_mode()
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        if path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)


PATH_ENV_VARS = ("NLTK_DATA", "ADVROBUST_DATA_DIR", "ADVROBUST_SHARED", "TA_CACHE_DIR", "HF_HOME")
"""Settings whose value is a machine's folder: a path under one is recorded as ``$VAR/...``."""
_ABSOLUTE = re.compile(r"(?<![\w.$~])/[^\s(),;'\"]+")


def portable_path(path: str | Path) -> str:
    """``path`` without this machine's layout: ``dist==version:inner/path`` for a file of an installed
    package, ``$VAR/...`` under a folder setting, a path relative to the working directory (the
    run's project), else ``.../parent/name``."""
    p = Path(path)
    for base in _site_dirs():
        rel = _relative(p, base)
        if rel is not None and rel.parts:
            dists = packages_distributions().get(rel.parts[0])
            if dists:
                return f"{dists[0]}=={version(dists[0])}:{rel.as_posix()}"
    for var in PATH_ENV_VARS:
        for value in filter(None, os.environ.get(var, "").split(os.pathsep)):
            rel = _relative(p, Path(value))
            if rel is not None:
                return f"${var}/{rel.as_posix()}" if rel.parts else f"${var}"
    rel = _relative(p, Path.cwd())
    if rel is not None:
        return rel.as_posix() or "."
    return f".../{p.parent.name}/{p.name}" if p.parent.name else p.name


def portable_text(text: str) -> str:
    """``text`` with every absolute path in it replaced by :func:`portable_path`."""
    return _ABSOLUTE.sub(lambda m: portable_path(m.group(0)), text)


def _relative(path: Path, base: Path) -> Path | None:
    try:
        return path.resolve().relative_to(base.resolve())
    except (ValueError, OSError):
        return None


def _site_dirs() -> list[Path]:
    paths = sysconfig.get_paths()
    dirs = {paths["purelib"], paths["platlib"], *getattr(site, "getsitepackages", list)()}
    return [Path(d) for d in sorted(dirs)]


def path_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be one folder or file name inside an output directory (None when it can): a
    user-given name joined to a directory must not climb out of it (``..``), be the directory itself
    (``.``, empty), or reach elsewhere (a separator, an absolute path)."""
    if not name or not name.strip():
        return "it is empty"
    if name in (".", ".."):
        return f"'{name}' is the directory itself or its parent"
    if "/" in name or "\\" in name or os.sep in name:
        return "it holds a path separator"
    if "\0" in name:
        return "it holds a NUL byte"
    return None
