"""The quickstart end to end at a smaller scale: scripts/quickstart.sh trains vanilla and ASA on the
same MR data with the real MiniLM, attacks both with DeepWordBug, prints the comparison and
writes a report with plots that holds no machine paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_compares_vanilla_and_asa_under_attack(tmp_path):
    out = tmp_path / "quickstart"
    env = {**os.environ, "VIRTUAL_ENV": sys.prefix, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    small = ["--set", "train.max_steps=3", "--set", "data.max_eval_examples=16", "--set", "attack.num_examples=3",
             "--set", f"bench.out_dir={out}"]
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "quickstart.sh"), *small], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # The comparison is printed: one row per defence under the same recipe, then ASA paired with vanilla.
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| vanilla |", "| asa |"))]
    assert [r.split("|")[1:3] for r in rows[:2]] == [[" vanilla ", " deepwordbug "], [" asa ", " deepwordbug "]]
    assert "## Paired comparison with vanilla" in proc.stdout

    report = json.loads((out / "report.json").read_text())
    assert report["missing"] == []
    for cell in report["cells"]:
        assert cell["num_examples"] == 3 and 0.0 <= cell["accuracy_under_attack"] <= cell["clean_accuracy"] <= 1.0
    assert [p["file"] for p in report["plots"] if p.get("file")], "no plot drawn"
    assert all((out / p["file"]).is_file() for p in report["plots"] if p.get("file"))

    # Rerunning continues: everything is finished, so nothing is trained or attacked again.
    again = subprocess.run(["bash", str(ROOT / "scripts" / "quickstart.sh"), *small], capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done, skipped") == 4, again.stdout

    # No machine paths: packages by name and version, paths relative to the run or the project.
    for name in ("report.md", "report.json"):
        text = (out / name).read_text()
        assert "site-packages" not in text and str(tmp_path) not in text, name
