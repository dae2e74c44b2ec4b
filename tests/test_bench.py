"""`advrobust bench` / `advrobust report`: a tiny defence x attack grid end to end.

Three defences (vanilla, fgm, asa) on the tiny BERT and the toy data, attacked with deepwordbug
(no assets needed) on a few dev examples; a second grid adds seeds and a second recipe.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tomli_w
from asa_plugin.attacks.results import without_timing
from attack_support import nltk_data_dir

from asa_plugin.bench.markdown import delta_text
from asa_plugin.cli import main

DEFENCES = ["vanilla", "fgm", "asa"]
RECIPE = "deepwordbug"
N = 5
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("accuracy_under_attack", "clean_vs_attack", "delta_vs_baseline", "asa_mask_ratio", "asa_map")


def bench_config(path: Path, out: Path, model: Path, data: dict, cache: Path, bench: dict | None = None,
                 train: dict | None = None) -> Path:
    config = {
        "bench": {"defences": DEFENCES, "recipes": [RECIPE], "out_dir": str(out), "max_parallel": 1, **(bench or {})},
        "model": {"backbone": str(model), "num_labels": 2, "max_length": 32},
        "data": {"train_file": str(data["train"]), "dev_file": str(data["dev"])},
        "defence": {"fgm": {"epsilon": 0.5}, "asa": {"tau": 0.5}},
        "train": {"epochs": 2, "batch_size": 16, "lr": 5e-3, "warmup_ratio": 0.0, "seed": 7, **(train or {})},
        # workers = 1: attacks run in the test's process (TextAttack imported once, not per cell and worker);
        # worker pools have their own tests (test_attack_resume_shard.py, test_bench_executors.py)
        "attack": {"profile": "stock", "num_examples": N, "seed": 3, "cache_dir": str(cache),
                   "nltk_data": nltk_data_dir(), "workers": 1},
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
    assert report["seeds"] == [7] and report["baseline"] == "vanilla"


def robust_outcomes(out: Path, run: str, recipe: str = RECIPE) -> dict[int, bool]:
    """Example index -> still correct after the attack, read straight from results.jsonl."""
    rows = [json.loads(line) for line in (out / "runs" / run / "attack" / recipe / "results.jsonl").open()]
    return {r["index"]: r["outcome"] in ("failed", "maximized") for r in rows}


def test_each_defence_is_compared_with_vanilla_on_the_same_examples(bench):
    _, out = bench
    cells = {c["defence"]: c for c in read(out / "report.json")["cells"]}
    assert "comparison" not in cells["vanilla"]
    vanilla = robust_outcomes(out, "vanilla")
    for label in ("fgm", "asa"):
        comparison, mine = cells[label]["comparison"], robust_outcomes(out, label)
        assert comparison["status"] == "done" and comparison["baseline"] == "vanilla"
        assert comparison["seeds"] == [7] and comparison["n_examples"] == N
        diff = comparison["accuracy_under_attack"]
        assert diff["delta"] == pytest.approx(cells[label]["accuracy_under_attack"]
                                              - cells["vanilla"]["accuracy_under_attack"])
        assert diff["ci"][0] <= diff["delta"] <= diff["ci"][1]
        assert diff["significant"] == (diff["ci"][0] > 0 or diff["ci"][1] < 0)
        (test,) = comparison["mcnemar"]
        assert test["defence_only_correct"] == sum(mine[i] and not vanilla[i] for i in vanilla)
        assert test["baseline_only_correct"] == sum(vanilla[i] and not mine[i] for i in vanilla)
        assert 0 < test["p_value"] <= 1


def test_compare_pairs_any_two_labels_on_the_same_examples_and_leaves_the_report_alone(bench, capsys):
    _, out = bench
    report_before = (out / "report.md").read_bytes()
    capsys.readouterr()
    assert main(["compare", str(out), "asa", "--against", "fgm", "--json"]) == 0
    (cell,) = json.loads(capsys.readouterr().out)["cells"]
    asa, fgm = robust_outcomes(out, "asa"), robust_outcomes(out, "fgm")
    assert cell["recipe"] == RECIPE and cell["baseline"] == "fgm" and cell["n_examples"] == N
    assert cell["accuracy_under_attack"]["delta"] == pytest.approx((sum(asa.values()) - sum(fgm.values())) / N)
    (test,) = cell["mcnemar"]
    assert test["defence_only_correct"] == sum(asa[i] and not fgm[i] for i in fgm)
    assert test["baseline_only_correct"] == sum(fgm[i] and not asa[i] for i in fgm)
    assert main(["compare", str(out), "asa"]) == 0  # against the bench's baseline: the report's own row
    table = capsys.readouterr().out
    assert "## Paired comparison with vanilla" in table
    reported = {c["defence"]: c for c in read(out / "report.json")["cells"]}["asa"]["comparison"]
    assert f"| asa | {RECIPE} | 7 | {N} |" in table and delta_text(reported["accuracy_under_attack"]) in table
    assert (out / "report.md").read_bytes() == report_before


def test_every_mcnemar_p_is_holm_adjusted_over_the_bench_and_each_comparison_has_its_detectable_difference(bench):
    """Issue 36: Holm over every defence x recipe x seed test of the report; the smallest difference each
    comparison detects at 80 % power from its discordant rate and n; both in report.md's paired table."""
    from asa_plugin.bench import stats

    _, out = bench
    report = read(out / "report.json")
    tests = [m for c in report["cells"] if "comparison" in c for m in c["comparison"]["mcnemar"]]
    assert len(tests) == report["statistics"]["holm_family"] == len(DEFENCES) - 1
    assert [m["p_holm"] for m in tests] == pytest.approx(stats.holm([m["p_value"] for m in tests]))
    assert all(m["p_holm"] >= m["p_value"] for m in tests)
    md = (out / "report.md").read_text()
    assert "| McNemar p | Holm p | Detectable | Verdict |" in md
    for cell in report["cells"]:
        if "comparison" not in cell:
            continue
        found, (test,) = cell["comparison"]["detectable_difference"], cell["comparison"]["mcnemar"]
        rate = (test["defence_only_correct"] + test["baseline_only_correct"]) / N
        assert found["discordant_rate"] == pytest.approx(rate) and found["n_examples"] == N
        assert found["difference"] == stats.detectable_difference(rate, N)
        shown = "n/a" if found["difference"] is None else f"±{100 * found['difference']:.1f}"
        assert f"| {test['p_value']:.3g} | {test['p_holm']:.3g} | {shown} |" in md


def test_training_records_its_cpu_seconds_and_the_report_shows_them_beside_wall_seconds(bench, tmp_path):
    """Issue 36: CPU seconds of the training process in metrics.json and in "Train s"; a metrics.json
    written before (no train_cpu_seconds) still reads, with n/a."""
    _, out = bench
    report = read(out / "report.json")
    for row in report["training"]:
        metrics = read(out / "runs" / row["run"] / "metrics.json")
        assert 0 < metrics["train_cpu_seconds"] and row["train_cpu_seconds"] == metrics["train_cpu_seconds"]
    md = (out / "report.md").read_text()
    vanilla = {c["defence"]: c for c in report["cells"]}["vanilla"]
    assert f"{vanilla['train_seconds']:.1f} (CPU {vanilla['train_cpu_seconds']:.1f})" in md
    copy = tmp_path / "old"
    shutil.copytree(out, copy)
    for label in DEFENCES:
        path = copy / "runs" / label / "metrics.json"
        path.write_text(json.dumps({k: v for k, v in read(path).items() if k != "train_cpu_seconds"}))
    assert main(["report", str(copy)]) == 0
    old = read(copy / "report.json")
    assert all(row["train_cpu_seconds"] is None for row in old["training"])
    assert "(CPU" not in (copy / "report.md").read_text() and "| n/a | " in (copy / "report.md").read_text()


@pytest.mark.parametrize(("recorded", "expect_cpu"), [(0.0, True), (None, False)],
                         ids=["new run", "resumed from a checkpoint without CPU seconds"])
def test_training_time_adds_wall_and_cpu_seconds_and_keeps_unknown_cpu_unknown(recorded, expect_cpu):
    from asa_plugin.training.state import Stopwatch, TrainState

    state = TrainState(train_seconds=1.0, train_cpu_seconds=recorded)
    watch = Stopwatch()
    sum(i * i for i in range(200_000))  # some CPU work for this process
    state.add_time(watch)
    assert state.train_seconds > 1.0
    if expect_cpu:
        assert state.train_cpu_seconds > 0
    else:  # a part of the run was not measured: no partial sum passed off as the whole
        assert state.train_cpu_seconds is None


def test_attack_rows_record_the_confidence_of_each_prediction(bench):
    """Issue 36: the probability the model gave its prediction, before and after the attack (report.html)."""
    _, out = bench
    rows = [json.loads(line) for line in (out / "runs" / "vanilla" / "attack" / RECIPE / "results.jsonl").open()]
    for row in rows:
        for key in ("original_confidence", "perturbed_confidence"):
            assert 0.5 <= row[key] <= 1.0, row  # two classes: the predicted one has at least half
        if row["outcome"] == "skipped":  # nothing attacked: the same text, the same probability
            assert row["perturbed_confidence"] == row["original_confidence"]


@pytest.mark.parametrize(("args", "message"), [
    (["nope"], "DEFENCE 'nope' is not a label of the bench"),
    (["asa", "--against", "nope"], "--against 'nope' is not a label of the bench"),
    (["asa", "--against", "asa"], "'asa' is the label it would be compared with"),
    (["vanilla"], "'vanilla' is the label it would be compared with"),
])
def test_compare_with_a_bad_label_is_one_line_with_exit_2(bench, capsys, args, message):
    _, out = bench
    capsys.readouterr()
    assert main(["compare", str(out), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err
    assert "its labels: vanilla, fgm, asa" in captured.err or "--against LABEL" in captured.err


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
    assert "## Paired comparison with vanilla" in md and "| Δ under attack vs vanilla | McNemar p |" in md
    assert md.count("| vanilla | deepwordbug |") == 1  # the baseline is not compared with itself
    for name in PLOTS:
        assert f"]({name}.png)" in md


def test_plots_are_valid_png_images(bench):
    import matplotlib.image as mpimg

    _, out = bench
    report = read(out / "report.json")
    assert [p["file"] for p in report["plots"]] == [f"{n}.png" for n in PLOTS]
    for plot in report["plots"]:
        path = out / plot["file"]
        assert path.read_bytes()[:8] == PNG_MAGIC
        height, width, _ = mpimg.imread(path).shape
        assert height > 100 and width > 100


def test_report_command_rebuilds_the_identical_report(bench):
    _, out = bench
    before = (out / "report.json").read_bytes()
    html = (out / "report.html").read_text(encoding="utf-8")  # the bench wrote it at its end (issue 36)
    for name in ("report.json", "report.md", "report.html", "accuracy_under_attack.png"):
        (out / name).unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.json").read_bytes() == before
    assert (out / "report.md").is_file() and (out / "accuracy_under_attack.png").is_file()
    assert (out / "report.html").read_text(encoding="utf-8") == html


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
    assert cells["fgm"]["status"] == "missing" and cells["fgm"]["per_seed"] == {}
    assert not {"eval_accuracy", "accuracy_under_attack", "comparison"} & set(cells["fgm"])
    assert cells["asa"]["status"] == "missing" and "accuracy_under_attack" not in cells["asa"]
    assert "comparison" not in cells["asa"] and cells["asa"]["accuracy_under_attack_ci"] is None
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
    ({"bench": {"variants": {"asa tau": {"defence": "asa"}}}}, "bench.variants.asa tau: a variant name is a run"),
    ({"bench": {"variants": {"strong": {"asa": {"tau": 0.9}}}}}, "bench.variants.strong: needs defence = \"NAME\""),
    ({"bench": {"variants": {"strong": {"defence": "asa", "fgm": {"epsilon": 1.0}}}}},
     "bench.variants.strong.fgm: 'fgm' is not a defence of 'asa'"),
    ({"bench": {"variants": {"strong": {"defence": "asa", "asa": 0.9}}}}, "bench.variants.strong.asa must be a table"),
    ({"bench": {"defences": ["vanilla", "nope-x"], "variants": {"nope-x": {"defence": "nope"}}}},
     "bench.variants.nope-x: unknown defence 'nope' in 'nope-x'"),
    ({"bench": {"variants": {"fgm": {"defence": "asa"}}}}, "bench.variants.fgm: 'fgm' is a defence's own name"),
    ({"bench": {"defences": ["vanilla", "strong+fgm"], "variants": {"strong": {"defence": "asa"}}}},
     "'strong+fgm' composes variant 'strong'"),
    ({"bench": {"defences": ["vanilla", "strong"], "variants": {"strong": {"defence": "asa", "asa": {"tau": -1.0}}}}},
     "defence 'strong': defence.tau"),
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


def test_cost_per_step_is_relative_to_vanilla_of_the_same_seed_else_its_mean():
    from asa_plugin.bench.report import relative_cost

    def run(defence, seed, per_step, status="done"):
        return {"defence": defence, "seed": seed, "status": status, "seconds_per_step": per_step}

    rows = [run("vanilla", 42, 3.0), run("vanilla", 43, 1.0), run("asa", 42, 6.0), run("asa", 43, 2.5),
            run("asa", 44, 4.0), run("fgm", 42, None, status="missing")]
    relative_cost(rows)
    assert [r.get("seconds_per_step_vs_vanilla") for r in rows] == [1.0, 1.0, 2.0, 2.5, 2.0, None]


def test_a_variant_is_a_label_with_its_own_parameters_over_the_defence_tables(tmp_path, tiny_bert_dir, toy_data,
                                                                              attack_cache):
    from asa_plugin.bench.cells import build_cells, step_cost
    from asa_plugin.bench.plan import load_plan
    from asa_plugin.bench.plots import asa_labels

    variants = {"asa-tau0.9": {"defence": "asa", "asa": {"tau": 0.9}},
                "mixed": {"defence": "asa+freelb", "freelb": {"adv_steps": 2}}}
    config = bench_config(tmp_path / "bench.toml", tmp_path / "out", tiny_bert_dir, toy_data, attack_cache,
                          bench={"defences": ["vanilla", "asa", "asa-tau0.9", "mixed"], "variants": variants})
    plan = load_plan(config)
    cells = {cell.label: cell for cell in plan.cells}
    assert cells["asa"].cfg.defence.to_dict()["tau"] == 0.5  # the [defence.asa] table
    assert cells["asa-tau0.9"].cfg.defence.to_dict()["tau"] == 0.9  # the variant's own tau, the rest as asa's
    assert ({k: v for k, v in cells["asa-tau0.9"].cfg.defence.to_dict().items() if k != "tau"}
            == {k: v for k, v in cells["asa"].cfg.defence.to_dict().items() if k != "tau"})
    assert cells["asa-tau0.9"].run_dir == tmp_path / "out" / "runs" / "asa-tau0.9"
    mixed = cells["mixed"].cfg.defence.to_dict()
    assert mixed["name"] == ["asa", "freelb"] and mixed["asa"]["tau"] == 0.5 and mixed["freelb"]["adv_steps"] == 2
    costs = {cell.run.label: cell.cost for cell in build_cells(plan) if cell.kind == "train"}
    assert costs["asa-tau0.9"] == costs["asa"] == step_cost("asa") and costs["mixed"] == step_cost("asa+freelb")
    recorded = plan.describe()["defence_params"]
    assert recorded["asa-tau0.9"]["tau"] == 0.9
    assert asa_labels({"defences": plan.labels, "defence_params": recorded}) == ["asa", "asa-tau0.9", "mixed"]


def test_only_defences_runs_a_subset_and_the_report_lists_the_rest_missing(tmp_path, tiny_bert_dir, toy_data,
                                                                           attack_cache, capfd):
    out = tmp_path / "out"
    config = bench_config(tmp_path / "bench.toml", out, tiny_bert_dir, toy_data, attack_cache)
    assert main(["bench", str(config), "--no-progress", "--only-defences", "vanilla"]) == 0
    assert "%|" not in capfd.readouterr().err  # --no-progress: no training (or attack) progress bar
    assert (out / "runs" / "vanilla" / "metrics.json").is_file() and not (out / "runs" / "fgm").exists()
    report = read(out / "report.json")
    assert "train fgm" in report["missing"] and "train asa" in report["missing"]
    assert main(["bench", str(config), "--only-defences", "vanila"]) == 2


SEEDS = [7, 8]
SEEDED = {"recipes": [RECIPE, "pwws"], "seeds": SEEDS, "extra_seeds_defences": ["vanilla", "asa"],
          "extra_seeds_recipes": [RECIPE]}
LEARN = {"epochs": 10, "lr": 3e-3, "warmup_ratio": 0.1}  # the toy task is learned: outcomes differ between models
RUNS = {  # run directory -> (seed, recipes attacked) in the seeded grid
    "vanilla": (7, [RECIPE, "pwws"]), "vanilla.seed8": (8, [RECIPE]), "fgm": (7, [RECIPE, "pwws"]),
    "asa": (7, [RECIPE, "pwws"]), "asa.seed8": (8, [RECIPE]),
}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tiny_bert_dir, toy_data, attack_cache):
    """The grid with seeds 7 and 8 for vanilla and asa (deepwordbug only for seed 8); its stdout."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("seeded")
    out = root / "out"
    config = bench_config(root / "bench.toml", out, tiny_bert_dir, toy_data, attack_cache, bench=SEEDED, train=LEARN)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert main(["bench", str(config), "--no-progress"]) == 0
    return config, out, log.getvalue()


def test_every_seed_trains_into_its_own_run_with_the_same_data_and_examples(seeded):
    import tomllib

    _, out, _ = seeded
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(RUNS)
    resolved = {run: tomllib.loads((out / "runs" / run / "config.resolved.toml").read_text()) for run in RUNS}
    for run, (seed, recipes) in RUNS.items():
        assert resolved[run]["train"]["seed"] == seed
        assert resolved[run]["data"] == resolved["vanilla"]["data"]  # same subset_seed, files, sizes
        assert sorted(p.name for p in (out / "runs" / run / "attack").iterdir()) == sorted(recipes)
    for recipe in (RECIPE, "pwws"):
        texts = {run: [json.loads(line)["original_text"]
                       for line in (out / "runs" / run / "attack" / recipe / "results.jsonl").open()]
                 for run, (_, recipes) in RUNS.items() if recipe in recipes}
        assert len({tuple(t) for t in texts.values()}) == 1, f"{recipe}: models attacked on different examples"
    assert read(out / "bench.json")["seeds"] == SEEDS


def test_the_grid_runs_the_longest_training_first_and_every_training_before_its_attacks(seeded):
    """Issue 22: cells run longest first (training by the defence's measured step cost), one line per finished cell."""
    import re

    from asa_plugin.bench.cells import step_cost

    _, _, log = seeded
    finished = [line.split()[1:4] for line in log.splitlines() if re.match(r"\[bench\] \d+/\d+ ", line)]
    assert [count for count, _, _ in finished] == [f"{i}/{len(finished)}" for i in range(1, len(finished) + 1)]
    steps = [(kind, run.rstrip(":")) for _, kind, run in finished]
    trained = [run for kind, run in steps if kind == "train"]
    assert sorted(trained) == sorted(RUNS) and steps[:len(trained)] == [("train", r) for r in trained]
    costs = [step_cost(run.split(".seed")[0]) for run in trained]
    assert costs == sorted(costs, reverse=True) and costs[0] > costs[-1], trained  # asa, fgm, then vanilla
    attacked = [run for kind, run in steps if kind == "attack"]
    assert sorted(attacked) == sorted(f"{run}/{r}" for run, (_, recipes) in RUNS.items() for r in recipes)


def test_the_report_shows_the_mean_and_std_over_seeds_and_keeps_every_seed(seeded):
    import statistics

    _, out, _ = seeded
    report = read(out / "report.json")
    assert report["missing"] == [] and report["seeds"] == SEEDS
    cells = {(c["defence"], c["recipe"]): c for c in report["cells"]}
    for (label, recipe), cell in cells.items():
        runs = [run for run, (_, recipes) in RUNS.items() if run.split(".seed")[0] == label and recipe in recipes]
        assert cell["seeds"] == [RUNS[r][0] for r in runs] and cell["status"] == "done"
        values = [read(out / "runs" / r / "attack" / recipe / "summary.json")["accuracy_under_attack"] for r in runs]
        assert [cell["per_seed"][str(RUNS[r][0])]["accuracy_under_attack"] for r in runs] == values
        assert cell["accuracy_under_attack"] == pytest.approx(statistics.mean(values))
        if len(values) > 1:
            assert cell["accuracy_under_attack_std"] == pytest.approx(statistics.stdev(values))
        else:
            assert "accuracy_under_attack_std" not in cell
        low, high = cell["accuracy_under_attack_ci"]
        assert low <= cell["accuracy_under_attack"] <= high
    assert cells[("asa", RECIPE)]["comparison"]["seeds"] == SEEDS  # both trained with both seeds: paired by seed
    assert len(cells[("asa", RECIPE)]["comparison"]["mcnemar"]) == 2
    assert cells[("asa", "pwws")]["comparison"]["seeds"] == [7]
    assert cells[("fgm", RECIPE)]["comparison"]["seeds"] == [7]  # fgm has one seed
    md = (out / "report.md").read_text()
    assert f"| vanilla | {RECIPE} | 7, 8 | {N} |" in md and " ± " in md


def test_report_rebuilds_the_same_intervals_from_stored_results(seeded):
    _, out, _ = seeded
    before = (out / "report.json").read_bytes()
    (out / "report.json").unlink()
    (out / "delta_vs_baseline.png").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.json").read_bytes() == before  # the bootstrap is seeded
    assert (out / "delta_vs_baseline.png").read_bytes()[:8] == PNG_MAGIC


def test_a_degenerate_model_is_marked_in_every_table_and_never_shown_as_robust(seeded, tmp_path):
    """The report judges each run again from its stored eval predictions, whatever metrics.json's flag says."""
    _, out, _ = seeded
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    for run in RUNS:  # the test decides which model is degenerate: asa.seed8 predicted class 1 for all of dev
        metrics_path = copy / "runs" / run / "metrics.json"
        metrics = {**read(metrics_path), "degenerate": False, "degenerate_reason": None}
        if run == "asa.seed8":
            gold = metrics["history"][-1]["eval_label_counts"]
            metrics["history"][-1]["eval_confusion"] = [[0, gold[0]], [0, gold[1]]]
        metrics_path.write_text(json.dumps(metrics))
    assert main(["report", str(copy)]) == 0
    cells = {(c["defence"], c["recipe"]): c for c in read(copy / "report.json")["cells"]}
    assert cells[("asa", RECIPE)]["degenerate"] and "seed 8: dev: it recognises class 0 in 0.0%" in cells[
        ("asa", RECIPE)]["degenerate_reason"]
    assert cells[("asa", RECIPE)]["comparison"]["degenerate"]
    assert not cells[("asa", "pwws")]["degenerate"]  # seed 7 alone: not degenerate
    md = (copy / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith(f"| asa | {RECIPE} | 7, 8 |"))
    assert row.split(" | ")[6] == "degenerate" and row.endswith("| degenerate | degenerate | degenerate |")
    paired = next(line for line in md.splitlines() if line.startswith(f"| asa | {RECIPE} | 7, 8 | {N} |")
                  and line.endswith("| degenerate |"))
    assert paired
    assert "| asa | 8 | asa.seed8 |" in md and "yes: it recognises class 0 in 0.0%" in md
    vanilla = next(line for line in md.splitlines() if line.startswith(f"| vanilla | {RECIPE} | 7, 8 |"))
    assert vanilla.endswith("| too few examples |")  # {N} attacked examples cannot show skill


def test_a_cell_is_degenerate_when_its_attacked_examples_say_so():
    from asa_plugin.bench.report import seed_cell

    judged = {"degenerate": True, "reason": "it recognises class 0 in 2.0% of its 50 examples",
              "balanced_accuracy": 0.51}
    cell = seed_cell("asa", "pwws", [1, 2], {1: {"judgement": judged}, 2: {"judgement": {**judged, "degenerate": False,
                                                                                          "reason": None}}},
                     {1: {"eval_accuracy": 0.9}, 2: {"eval_accuracy": 0.9}})
    assert cell["degenerate"] and cell["degenerate_reason"] == "seed 1: attacked examples: it recognises class 0 in " \
                                                               "2.0% of its 50 examples"
    assert cell["balanced_accuracy_attacked"] == 0.51


CELL_STATUS = [  # (the seeds of 7, 8 whose attack finished, the cell's status)
    pytest.param([7, 8], "done", id="done"),
    pytest.param([7], "partial", id="partial"),
    pytest.param([8], "partial", id="partial-first-seed-missing"),
    pytest.param([], "missing", id="missing"),
]


@pytest.mark.parametrize("finished,status", CELL_STATUS)
def test_a_cell_is_done_only_when_every_seed_finished(finished, status):
    from asa_plugin.bench.report import seed_cell

    summaries = {seed: {"accuracy_under_attack": seed / 10} for seed in finished}
    cell = seed_cell("asa", "pwws", [7, 8], summaries, {7: {"eval_accuracy": 0.9}, 8: {"eval_accuracy": 0.8}})
    assert (cell["status"], cell["seeds_done"]) == (status, finished)
    if finished:  # the mean is over the finished seeds only
        assert cell["accuracy_under_attack"] == pytest.approx(sum(s / 10 for s in finished) / len(finished))
    else:
        assert "accuracy_under_attack" not in cell


def test_a_cell_with_a_seed_missing_is_reported_partial(seeded, tmp_path):
    _, out, _ = seeded
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (copy / "runs" / "asa.seed8" / "attack" / RECIPE / "summary.json").unlink()
    assert main(["report", str(copy)]) == 0
    report = read(copy / "report.json")
    assert report["missing"] == [f"attack asa.seed8/{RECIPE}"]
    cells = {(c["defence"], c["recipe"]): c for c in report["cells"]}
    cell = cells[("asa", RECIPE)]
    assert (cell["status"], cell["seeds"], cell["seeds_done"]) == ("partial", SEEDS, [7])
    assert cell["accuracy_under_attack"] == cell["per_seed"]["7"]["accuracy_under_attack"]
    assert "accuracy_under_attack" not in cell["per_seed"]["8"]  # seed 8 trained, never attacked
    assert cells[("vanilla", RECIPE)]["status"] == "done"


def test_a_bench_json_without_seeds_is_read_as_one_seed(bench, tmp_path):
    _, out = bench
    copy = tmp_path / "old"
    shutil.copytree(out, copy)
    info = read(copy / "bench.json")
    for key in ("seeds", "runs", "baseline"):
        info.pop(key)
    (copy / "bench.json").write_text(json.dumps(info))
    assert main(["report", str(copy)]) == 0
    old, new = read(copy / "report.json"), read(out / "report.json")
    assert old["cells"] == new["cells"] and old["training"] == new["training"]


def test_only_seeds_runs_one_seed_and_the_report_lists_the_rest_missing(tmp_path, tiny_bert_dir, toy_data,
                                                                        attack_cache):
    out = tmp_path / "out"
    config = bench_config(tmp_path / "bench.toml", out, tiny_bert_dir, toy_data, attack_cache, bench=SEEDED)
    assert main(["bench", str(config), "--no-progress", "--only-defences", "vanilla", "--only-seeds", "8"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["vanilla.seed8"]
    missing = read(out / "report.json")["missing"]
    assert "train vanilla" in missing and "attack vanilla.seed8/pwws" not in missing  # seed 8 has no pwws
    assert f"attack vanilla.seed8/{RECIPE}" not in missing and "train asa.seed8" in missing
    assert main(["bench", str(config), "--only-seeds", "9"]) == 2


def test_a_run_trained_with_another_seed_is_refused_not_reused(bench, capsys):
    config, out = bench
    assert main(["bench", str(config), "--no-progress", "--set", "bench.seeds=[9, 7]"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.seed = 7" in err and "seed 9" in err, err
    assert not (out / "runs" / "vanilla.seed7").exists()


SEED_BAD = [  # ([bench] keys, fragment of the one-line error)
    ({"seeds": []}, "bench.seeds is empty"),
    ({"seeds": [7, 7]}, "bench.seeds lists '7' twice"),
    ({"extra_seeds_defences": ["pgd"]}, "bench.extra_seeds_defences: 'pgd' is not in bench.defences"),
    ({"extra_seeds_recipes": ["pwws"]}, "bench.extra_seeds_recipes: 'pwws' is not a recipe of the grid"),
    ({"baseline": "pgd"}, "bench.baseline 'pgd' is not in bench.defences"),
    ({"seeds": ["a"]}, "bench.seeds must be list of int or none"),
]


@pytest.mark.parametrize(("bench_keys", "message"), SEED_BAD, ids=[m for _, m in SEED_BAD])
def test_bad_seed_keys_are_one_line_with_exit_2(bench_keys, message, tmp_path, tiny_bert_dir, toy_data,
                                                attack_cache, capsys):
    config = bench_config(tmp_path / "bench.toml", tmp_path / "out", tiny_bert_dir, toy_data, attack_cache,
                          bench=bench_keys)
    assert main(["bench", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(config) in err, err
    assert not (tmp_path / "out").exists()
