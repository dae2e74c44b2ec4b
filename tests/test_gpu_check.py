"""``benchmarks/gpu_check.py`` in its CPU mode with a tiny model: every case in its own process, a verdict per
case, the JSON rewritten after each, and a non-zero exit naming the case when a defence is broken."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from attack_support import nltk_data_dir
from plugin_support import install_fake_distribution

ROOT = Path(__file__).resolve().parent.parent

NAN_DEFENCE = '''
"""A broken defence: its loss is NaN."""
from asa_plugin.defences.base import Defence, StepResult
from asa_plugin.hookspecs import hookimpl


class NaNDefence(Defence):
    name = "nanloss"

    def training_step(self, batch, backward):
        loss = self.objective(batch, None) * float("nan")
        backward(loss)
        return StepResult(loss=loss.detach())


@hookimpl
def advrobust_register_defences(register):
    register("nanloss", NaNDefence)
'''


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _argv(tmp_path, tiny_bert_dir, toy_data, *extra: str) -> list[str]:
    return ["--model", str(tiny_bert_dir), "--train-file", str(toy_data["train"]), "--dev-file",
            str(toy_data["dev"]), "--steps", "2", "--batch-size", "4", "--lengths", "32", "--precisions", "no",
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "gpu_check.json"), *extra]


def test_cpu_mode_passes_every_case_and_reports_each(tmp_path, tiny_bert_dir, toy_data, monkeypatch, capsys):
    monkeypatch.setenv("NLTK_DATA", nltk_data_dir())
    assert load_script().main(_argv(tmp_path, tiny_bert_dir, toy_data, "--defences", "vanilla", "asa",
                                    "--attack-examples", "2")) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [c["id"] for c in report["cases"]] == ["train-vanilla-no-32", "train-asa-no-32", "recompute-asa-no-32",
                                                 "attack-pwws"]
    assert all(c["verdict"] == "pass" and not c["reasons"] for c in report["cases"])
    train = report["cases"][1]["result"]
    assert train["optimizer_steps"] == 2 and train["skipped_steps"] == 0 and train["weights_changed"]
    recompute = report["cases"][2]["result"]
    assert recompute["dropout"] > 0 and recompute["relative_difference"] == 0.0  # bit for bit on CPU
    assert recompute["other_seed_difference"] > 0.03  # the check would see a wrong dropout mask
    assert report["cases"][3]["result"]["examples"] == 2
    assert "4 of 4 cases pass" in capsys.readouterr().out


def test_a_broken_defence_fails_its_case_and_the_exit_status(tmp_path, tiny_bert_dir, toy_data, monkeypatch,
                                                             capsys):
    site = tmp_path / "site"
    install_fake_distribution(site, "advrobust-nanloss", "advrobust_nanloss", NAN_DEFENCE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("ADVROBUST_DISABLE_PLUGINS", raising=False)
    code = load_script().main(_argv(tmp_path, tiny_bert_dir, toy_data, "--defences", "vanilla", "nanloss",
                                    "--no-recompute", "--attack-examples", "0"))
    assert code == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    verdicts = {c["id"]: c["verdict"] for c in report["cases"]}
    assert verdicts == {"train-vanilla-no-32": "pass", "train-nanloss-no-32": "FAIL"}
    assert "loss became nan" in report["cases"][1]["reasons"][0]
    out = capsys.readouterr().out
    assert "| train-nanloss-no-32 | FAIL | " in out and "FAILED: train-nanloss-no-32" in out
