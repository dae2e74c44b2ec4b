"""Throwaway third-party plugins, installed the way pip leaves them, for the plugin tests."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest


def install_fake_distribution(site: Path, dist: str, module: str, source: str) -> None:
    """What `pip install` leaves behind: the module plus a dist-info with entry_points.txt."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"  # as pip names it: `-` separates name and version
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[advrobust]\n{module} = {module}\n")


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Factory: ``install_plugin(module, source)`` installs a plugin into a folder on ``sys.path``
    of this process, so the process-wide plugin manager, rebuilt, loads it through its entry point."""
    from asa_plugin import plugins

    site = tmp_path / "site"
    installed: list[str] = []
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)

    def install(module: str, source: str) -> Path:
        install_fake_distribution(site, module.replace("_", "-"), module, source)
        installed.append(module)
        importlib.invalidate_caches()
        plugins._cached_manager_env.cache_clear()
        return site

    yield install
    plugins._cached_manager_env.cache_clear()
    for module in installed:
        sys.modules.pop(module, None)
