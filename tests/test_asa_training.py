"""``name = "asa"`` through the training loop: metrics, reversibility, export, asa-maps."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from asa_plugin.cli import main
from asa_plugin.config import load_config
from asa_plugin.training.loop import train


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory, tiny_bert_dir, toy_data):
    """One vanilla and one ASA run of the same seed on the tiny model."""
    runs = {}
    for name in ("vanilla", "asa"):
        run_dir = tmp_path_factory.mktemp(name)
        overrides = [f'defence.name="{name}"', f'model.backbone="{tiny_bert_dir}"', "model.max_length=32",
                     f'data.train_file="{toy_data["train"]}"', f'data.dev_file="{toy_data["dev"]}"',
                     "train.epochs=2", "train.batch_size=16", "train.lr=5e-3", "train.warmup_ratio=0.0",
                     "train.seed=7", f'output.run_dir="{run_dir}"']
        runs[name] = (run_dir, train(load_config(None, overrides)))
    return runs


def test_trains_from_a_config_file_and_reports_mask_ratios(run_config):
    path = run_config(defence='name = "asa"\ntau = 0.5')
    cfg = load_config(path)
    metrics = train(cfg)
    run_dir = cfg.run_dir()
    assert metrics["defence"] == "asa"
    first = metrics["history"][0]["asa_mask_ratio_per_layer"]
    assert len(first) == 2 and all(0 < r < 1 for r in first), first
    ratios = metrics["asa_mask_ratio_per_layer"]
    assert len(ratios) == 2 and all(0 <= r < 1 for r in ratios), ratios
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["history"][-1]["asa_mask_ratio_per_layer"] == ratios
    assert 'name = "asa"' in (run_dir / "config.resolved.toml").read_text()


def test_every_epoch_reports_one_ratio_per_layer(trained_runs):
    _, metrics = trained_runs["asa"]
    assert len(metrics["history"]) == 2
    for epoch in metrics["history"]:
        assert len(epoch["asa_mask_ratio_per_layer"]) == 2
        assert all(0 <= r < 1 for r in epoch["asa_mask_ratio_per_layer"])
    # the first epoch always masks some units; later, tau=0.5 may drive the tiny model's weak
    # adversaries to keep everything (see docs/asa.md, "Calibration")
    assert all(0 < r < 1 for r in metrics["history"][0]["asa_mask_ratio_per_layer"])
    dev_rows = 32  # toy_data's dev split: an accuracy is a whole number of correct rows
    assert [h["eval_accuracy"] for h in metrics["history"]] == metrics["eval_accuracy_per_epoch"]
    assert metrics["eval_accuracy_per_epoch"][-1] == metrics["eval_accuracy"]
    assert all((a * dev_rows) == pytest.approx(round(a * dev_rows)) for a in metrics["eval_accuracy_per_epoch"])


def test_export_is_a_plain_model_identical_in_structure_to_vanilla(trained_runs):
    exported = {}
    for name, (run_dir, _) in trained_runs.items():
        with safe_open(str(run_dir / "model" / "model.safetensors"), "pt") as f:
            exported[name] = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    assert exported["asa"] == exported["vanilla"]
    assert not any("adversar" in k for k in exported["asa"])
    models = {n: AutoModelForSequenceClassification.from_pretrained(r / "model") for n, (r, _) in trained_runs.items()}
    count = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    assert count["asa"] == count["vanilla"]
    # Same seed, same data, same steps: the weights differ only because ASA's masked passes trained them.
    weights = {n: dict(m.named_parameters()) for n, m in models.items()}
    assert any(not torch.equal(weights["asa"][k], weights["vanilla"][k]) for k in weights["asa"])


def test_adversary_is_saved_beside_the_model_not_inside(trained_runs):
    run_dir, _ = trained_runs["asa"]
    assert (run_dir / "asa_adversary.safetensors").is_file()
    info = json.loads((run_dir / "asa_adversary.json").read_text())
    assert info["layers"] == [0, 1] and info["projection_size"] == 32 and info["tau"] == 0.5
    assert not any(p.name.startswith("asa_") for p in (run_dir / "model").iterdir())
    vanilla_dir, _ = trained_runs["vanilla"]
    assert not (vanilla_dir / "asa_adversary.safetensors").exists()


def test_reported_accuracy_is_the_plain_exported_model_on_dev(trained_runs, toy_data):
    """Evaluation never applies the adversary: the exported model alone reproduces eval_accuracy."""
    import csv

    run_dir, metrics = trained_runs["asa"]
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    with open(toy_data["dev"], encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    enc = tokenizer([r["sentence"] for r in rows], padding=True, truncation=True, max_length=32,
                    return_tensors="pt")
    with torch.no_grad():
        preds = model(**enc).logits.argmax(-1)
    labels = torch.tensor([int(r["label"]) for r in rows])
    assert (preds == labels).float().mean().item() == pytest.approx(metrics["eval_accuracy"])


def test_asa_maps_writes_a_png(trained_runs, tmp_path, capsys):
    run_dir, _ = trained_runs["asa"]
    out = tmp_path / "maps.png"
    code = main(["asa-maps", str(run_dir), "--text", "the movie was really good", "--layers", "0,1",
                 "--out", str(out)])
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out) in capsys.readouterr().out


ERROR_CASES = [  # (which run, extra args, fragment of the one-line error)
    ("vanilla", ["--text", "good"], "has no asa_adversary.safetensors"),
    ("asa", ["--text", "good", "--layers", "3"], "layer 3 has no adversary"),
    ("asa", ["--text", "good", "--layers", "a,b"], "--layers must be comma-separated"),
    ("asa", ["--text", "  "], "--text is empty"),
]


@pytest.mark.parametrize("run,args,fragment", ERROR_CASES)
def test_asa_maps_user_errors_are_one_line(trained_runs, run, args, fragment, capsys):
    run_dir, _ = trained_runs[run]
    assert main(["asa-maps", str(run_dir), *args]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1
