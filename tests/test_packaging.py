"""Packaging: adapters/ and attacks/ install under asa_plugin, never as top-level packages."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_only_the_asa_plugin_top_level_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("asa_plugin-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"asa_plugin"}
    assert "asa_plugin/adapters/base.py" in names and "asa_plugin/attacks/config.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[advrobust]" in text and "asa_plugin.defences.plugin" in text
    assert "advrobust = asa_plugin.cli:main" in text


def test_installed_project_imports_adapters_and_attacks_under_asa_plugin():
    code = ("import importlib.util as u; "
            "print(u.find_spec('asa_plugin.adapters') is not None, u.find_spec('asa_plugin.attacks') is not None, "
            "u.find_spec('adapters') is None or 'asa_plugin' not in (u.find_spec('adapters').origin or ''), "
            "u.find_spec('attacks') is None)")
    # -I: what the installation provides, not a PYTHONPATH at the checkout (whose top level holds adapters/, attacks/)
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True,
                         cwd="/").stdout
    assert out.split() == ["True", "True", "True", "True"]
