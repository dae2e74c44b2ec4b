"""``benchmarks/gpu_check.py``'s CPU fallback, with tiny settings: it trains every defence, attacks, reports."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

from attack_support import nltk_data_dir

ROOT = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_cpu_fallback_trains_every_defence_and_attacks(tmp_path, tiny_bert_dir, toy_data, monkeypatch):
    monkeypatch.setenv("NLTK_DATA", nltk_data_dir())
    gpu_check = load_script()
    out = tmp_path / "gpu_check.json"
    report = gpu_check.main(["--model", str(tiny_bert_dir), "--train-file", str(toy_data["train"]),
                             "--dev-file", str(toy_data["dev"]), "--steps", "1", "--batch-size", "4",
                             "--max-length", "32", "--attack-examples", "2", "--work", str(tmp_path / "work"),
                             "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["device"] == "cpu" and report["precisions"] == ["bf16", "no"]
    trained = {(r["defence"], r["precision"]) for r in report["train"]}
    assert trained == {(case, p) for case in gpu_check.CASES for p in ("bf16", "no")}
    for row in report["train"]:
        assert row["steps"] == 1 and math.isfinite(row["final_loss"])
        assert row["train_examples_per_second"] > 0 and row["peak_mib"] > 0
    assert report["ddp"].startswith("skipped: 0 GPU(s)")
    assert report["attack"]["returncode"] == 0 and report["attack"]["examples"] == 2
