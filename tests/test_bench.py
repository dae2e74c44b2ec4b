"""`advrobust bench` / `advrobust report`: a tiny defence x attack grid end to end.

Three defences (vanilla, fgm, asa) on the tiny BERT and the toy data, attacked with deepwordbug
(no assets needed) on a few dev examples.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tomli_w
from asa_plugin.attacks.results import without_timing
from attack_support import nltk_data_dir

from asa_plugin.cli import main

DEFENCES = ["vanilla", "fgm", "asa"]
RECIPE = "deepwordbug"
N = 5
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bench_config(path: Path, out: Path, model: Path, data: dict, cache: Path, bench: dict | None = None) -> Path:
    config = {
        "bench": {"defences": DEFENCES, "recipes": [RECIPE], "out_dir": str(out), **(bench or {})},
        "model": {"backbone": str(model), "num_labels": 2, "max_length": 32},
        "data": {"train_file": str(data["train"]), "dev_file": str(data["dev"])},
        "defence": {"fgm": {"epsilon": 0.5}, "asa": {"tau": 0.5}},
        "train": {"epochs": 2, "batch_size": 16, "lr": 5e-3, "warmup_ratio": 0.0, "seed": 7},
        "attack": {"profile": "stock", "num_examples": N, "seed": 3, "cache_dir": str(cache),
                   "nltk_data": nltk_data_dir()},
    }
    path.write_text(tomli_w.dumps(config))
    return path


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def summary_path(out: Path, label: str) -> Path:
    return out / "runs" / label / "attack" / RECIPE / "summary.json"


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_bert_dir, toy_data, attack_cache):
    root = tmp_path_factory.mktemp("bench")
    out = root / "out"
    config = bench_config(root / "bench.toml", out, tiny_bert_dir, toy_data, attack_cache)
    assert main(["bench", str(config), "--no-progress"]) == 0
    return config, out


def test_report_has_every_cell_with_the_values_of_its_summary(bench):
    _, out = bench
    report = read(out / "report.json")
    assert report["missing"] == []
    assert [(c["defence"], c["recipe"]) for c in report["cells"]] == [(d, RECIPE) for d in DEFENCES]
    for cell in report["cells"]:
        summary = read(summary_path(out, cell["defence"]))
        metrics = read(out / "runs" / cell["defence"] / "metrics.json")
        assert cell["status"] == "done"
        for key in ("clean_accuracy", "accuracy_under_attack", "attack_success_rate", "avg_words_perturbed_pct",
                    "avg_queries", "num_examples"):
            assert cell[key] == summary[key], key
        assert cell["num_examples"] == N
        assert cell["eval_accuracy"] == metrics["eval_accuracy"]
        assert cell["train_seconds"] == metrics["train_seconds"]
    training = {t["defence"]: t for t in report["training"]}
    vanilla = training["vanilla"]["train_seconds"] / training["vanilla"]["steps"]
    for row in training.values():
        assert row["seconds_per_step_vs_vanilla"] == pytest.approx(row["train_seconds"] / row["steps"] / vanilla)
    assert report["machines"] and report["machines"][0]["cpu_count"] >= 1
    assert report["settings"]["train"]["seed"] == 7 and report["settings"]["attack"]["num_examples"] == N


def test_each_defence_trains_with_its_own_table_and_the_same_budget(bench):
    _, out = bench
    resolved = {d: (out / "runs" / d / "config.resolved.toml").read_text() for d in DEFENCES}
    assert "epsilon = 0.5" in resolved["fgm"] and "tau = 0.5" in resolved["asa"]
    steps = {d: read(out / "runs" / d / "metrics.json")["steps"] for d in DEFENCES}
    assert len(set(steps.values())) == 1, steps


def test_report_md_shows_the_table_machine_and_plots(bench):
    _, out = bench
    md = (out / "report.md").read_text()
    for label in DEFENCES:
        assert f"| {label} | {RECIPE} |" in md
    assert "## Machine" in md and "none: every cell finished" in md
    for name in ("accuracy_under_attack", "clean_vs_attack", "asa_mask_ratio", "asa_map"):
        assert f"]({name}.png)" in md


def test_plots_are_valid_png_images(bench):
    import matplotlib.image as mpimg

    _, out = bench
    report = read(out / "report.json")
    assert [p["file"] for p in report["plots"]] == [f"{n}.png" for n in
                                                    ("accuracy_under_attack", "clean_vs_attack", "asa_mask_ratio",
                                                     "asa_map")]
    for plot in report["plots"]:
        path = out / plot["file"]
        assert path.read_bytes()[:8] == PNG_MAGIC
        height, width, _ = mpimg.imread(path).shape
        assert height > 100 and width > 100


def test_report_command_rebuilds_the_identical_report(bench):
    _, out = bench
    before = (out / "report.json").read_bytes()
    for name in ("report.json", "report.md", "accuracy_under_attack.png"):
        (out / name).unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.json").read_bytes() == before
    assert (out / "report.md").is_file() and (out / "accuracy_under_attack.png").is_file()


def test_missing_cells_are_reported_missing_never_invented(bench, tmp_path):
    _, out = bench
    copy = tmp_path / "partial"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "runs" / "fgm")
    shutil.rmtree(copy / "runs" / "asa" / "attack")
    assert main(["report", str(copy)]) == 0
    report = read(copy / "report.json")
    assert report["missing"] == ["train fgm", f"attack fgm/{RECIPE}", f"attack asa/{RECIPE}"]
    cells = {c["defence"]: c for c in report["cells"]}
    assert cells["fgm"] == {"defence": "fgm", "recipe": RECIPE, "status": "missing"}
    assert cells["asa"]["status"] == "missing" and "accuracy_under_attack" not in cells["asa"]
    plots = {p["name"]: p for p in report["plots"]}
    assert plots["asa_map"]["file"] is None and "not drawn" in (copy / "report.md").read_text()
    assert not (copy / "asa_map.png").exists()
    assert plots["asa_mask_ratio"]["file"] == "asa_mask_ratio.png"  # asa's training finished


def test_rerun_skips_finished_cells_and_redoes_only_a_deleted_summary(bench, monkeypatch):
    import asa_plugin.attacks.runner as runner

    import asa_plugin.training.loop as loop

    config, out = bench
    trained, attacked = [], []
    real_attack = runner.run_attack
    monkeypatch.setattr(loop, "train", lambda cfg, **kw: trained.append(cfg) or pytest.fail("retrained"))
    monkeypatch.setattr(runner, "run_attack", lambda job, *a, **kw: attacked.append(job.recipe_dir)
                        or real_attack(job, *a, **kw))
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/attack/*/summary.json")}
    assert main(["bench", str(config), "--no-progress"]) == 0
    assert trained == [] and attacked == []
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    deleted = summary_path(out, "fgm")
    before = read(deleted)
    deleted.unlink()
    assert main(["bench", str(config), "--no-progress"]) == 0
    assert attacked == [deleted.parent] and trained == []
    assert without_timing(read(deleted)) == without_timing(before)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if p != deleted)


def test_interrupted_training_resumes_from_its_checkpoint(bench, tmp_path, monkeypatch, capsys):
    """Ctrl-C after the first epoch's checkpoint; the rerun resumes and ends where an uninterrupted run ends."""
    from safetensors.torch import load_file

    from asa_plugin.training import checkpoint

    config, out = bench
    copy = tmp_path / "out"
    overrides = ["--no-progress", "--only-defences", "vanilla", "--only-recipes", RECIPE,
                 "--set", f"bench.out_dir={str(copy)!r}"]
    real_save = checkpoint.save

    def save_then_interrupt(accelerator, run_dir, state):
        real_save(accelerator, run_dir, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    assert main(["bench", str(config), *overrides]) == 130
    run = copy / "runs" / "vanilla"
    assert checkpoint.find(run) is not None and not (run / "metrics.json").exists()
    monkeypatch.setattr(checkpoint, "save", real_save)
    capsys.readouterr()
    assert main(["bench", str(config), *overrides]) == 0
    assert "train vanilla: resuming from checkpoint" in capsys.readouterr().out
    resumed, straight = read(run / "metrics.json"), read(out / "runs" / "vanilla" / "metrics.json")
    for key in ("steps", "eval_accuracy_per_epoch", "epochs", "train_examples"):
        assert resumed[key] == straight[key], key
    a = load_file(run / "model" / "model.safetensors")
    b = load_file(out / "runs" / "vanilla" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


BAD = [  # (bench section or a replacement of the [defence] section, fragment of the one-line error)
    ({"bench": {"colour": "red"}}, "unknown key bench.colour"),
    ({"bench": {"defences": []}}, "bench.defences is empty"),
    ({"bench": {"defences": ["vanilla", "vanilla"]}}, "lists 'vanilla' twice"),
    ({"bench": {"defences": ["asa+nope"]}}, "unknown defence 'nope' in 'asa+nope'"),
    ({"bench": {"recipes": ["nope"]}}, "unknown recipe 'nope'"),
    ({"bench": {"defences": "vanilla"}}, "bench.defences must be list of str"),
    ({"defence": {"name": "fgm"}}, "[defence.<name>] tables"),
    ({"defence": {"fgm": {"epsilon": -1.0}}}, "defence.epsilon"),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_bench_config_is_one_line_with_exit_2(change, message, tmp_path, tiny_bert_dir, toy_data,
                                                   attack_cache, capsys):
    config = bench_config(tmp_path / "bench.toml", tmp_path / "out", tiny_bert_dir, toy_data, attack_cache,
                          bench=change.get("bench"))
    if "defence" in change:
        import tomllib

        data = tomllib.loads(config.read_text())
        data["defence"] = change["defence"]
        config.write_text(tomli_w.dumps(data))
    assert main(["bench", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(config) in err, err
    assert not (tmp_path / "out").exists()


def test_only_defences_runs_a_subset_and_the_report_lists_the_rest_missing(tmp_path, tiny_bert_dir, toy_data,
                                                                           attack_cache):
    out = tmp_path / "out"
    config = bench_config(tmp_path / "bench.toml", out, tiny_bert_dir, toy_data, attack_cache)
    assert main(["bench", str(config), "--no-progress", "--only-defences", "vanilla"]) == 0
    assert (out / "runs" / "vanilla" / "metrics.json").is_file() and not (out / "runs" / "fgm").exists()
    report = read(out / "report.json")
    assert "train fgm" in report["missing"] and "train asa" in report["missing"]
    assert main(["bench", str(config), "--only-defences", "vanila"]) == 2
