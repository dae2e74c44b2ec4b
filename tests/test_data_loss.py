"""Nothing computed is silently replaced, mixed or counted twice (the "data loss" class of issue 21):
merge never replaces an unsharded run's rows; a refused bench rerun writes nothing; train never
leaves results of an earlier model beside a new one; a repeated row counts once; an attack resume
on replaced weights is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from attack_support import attack_args, read_jsonl
from safetensors.torch import load_file, save_file

from asa_plugin.cli import main

RECIPE = "deepwordbug"


def error_line(capsys, argv: list, code: int = 2) -> str:
    assert main([str(a) for a in argv]) == code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("advrobust ", "Traceback"))]
    assert lines and lines[-1].startswith(f"advrobust {argv[0]}: error: "), lines
    return lines[-1]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def attacked(tmp_path, trained_tiny, attack_data, attack_cache):
    """argv of a finished 3-example attack of a copy of the tiny model, and its recipe folder."""
    model = shutil.copytree(trained_tiny, tmp_path / "model")
    argv = attack_args(model, attack_data["dev"], tmp_path / "out", attack_cache, RECIPE, "--workers", "1",
                       num_examples=3)
    assert main(argv) == 0
    return argv, tmp_path / "out" / "attack" / RECIPE


# --- merge into a folder holding an unsharded run ------------------------------------------------------
@pytest.mark.parametrize("unsharded", ["finished", "started"])
def test_merge_never_replaces_the_rows_of_an_unsharded_run(capsys, attacked, unsharded):
    argv, recipe_dir = attacked
    assert main([*argv, "--shard", "0/1"]) == 0  # shards/0-of-1 beside the unsharded results
    if unsharded == "started":
        (recipe_dir / "summary.json").unlink()
    before = snapshot(recipe_dir)
    line = error_line(capsys, ["merge", recipe_dir])
    assert line == (f"advrobust merge: error: {recipe_dir} holds the results of a {unsharded} unsharded run; merging "
                    f"its shards would replace them: move its results.jsonl, run.json and summary.json (or the "
                    f"shards/) elsewhere first")
    assert snapshot(recipe_dir) == before


def test_merging_shards_twice_is_allowed(attacked, tmp_path):
    argv, _ = attacked
    out = tmp_path / "sharded"
    sharded = [a if a != str(tmp_path / "out") else str(out) for a in argv]
    for shard in ("0/2", "1/2"):
        assert main([*sharded, "--shard", shard]) == 0
    assert main(["merge", str(out)]) == 0
    first = snapshot(out / "attack" / RECIPE)
    assert main(["merge", str(out)]) == 0
    assert read_jsonl(out / "attack" / RECIPE / "results.jsonl") == [json.loads(line) for line in
                                                                     first["results.jsonl"].decode().splitlines()]


# --- a repeated row counts once ------------------------------------------------------------------------
def test_a_repeated_row_is_counted_once_on_resume_and_the_user_is_told(capsys, attacked):
    argv, recipe_dir = attacked
    results = recipe_dir / "results.jsonl"
    rows = results.read_text().splitlines()
    results.write_text("\n".join([*rows, rows[1], rows[0]]) + "\n")  # two runs appended the same examples
    assert main([*argv, "--resume"]) == 0
    err = capsys.readouterr().err
    assert (f"advrobust: warning: {results}: example(s) 0, 1 have more than one row (two runs appended to one "
            f"file?); each example is counted once, by its first row; the others are removed") in err
    summary = json.loads((recipe_dir / "summary.json").read_text())
    assert summary["num_examples"] == 3
    assert [r["index"] for r in read_jsonl(results)] == [0, 1, 2]


def test_reading_rows_keeps_the_first_of_each_example(tmp_path, capsys):
    from asa_plugin.attacks.results import read_rows

    path = tmp_path / "results.jsonl"
    lines = [{"index": 2, "outcome": "failed"}, {"index": 0, "outcome": "successful"},
             {"index": 2, "outcome": "successful"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert read_rows(path) == lines[:2]
    assert "example(s) 2 have more than one row" in capsys.readouterr().err
    assert len(path.read_text().splitlines()) == 3  # reading without repair changes nothing


# --- attack --resume on other weights --------------------------------------------------------------------
def test_attack_resume_refuses_replaced_weights_but_not_a_copy_of_the_same(capsys, attacked, tmp_path):
    argv, recipe_dir = attacked
    weights = tmp_path / "model" / "model.safetensors"
    (recipe_dir / "summary.json").unlink()  # an unfinished run
    original = weights.read_bytes()
    weights.write_bytes(original)  # the same weights written again (new mtime): still the same model
    assert main([*argv, "--resume"]) == 0
    tensors = load_file(weights)
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in tensors.items()}, str(weights))
    before = snapshot(recipe_dir)
    line = error_line(capsys, [*argv, "--resume"])
    assert line.startswith(f"advrobust attack: error: --resume: the model's weights in {tmp_path / 'model'} changed "
                           f"since {recipe_dir} was started (sha256 ")
    assert line.endswith("its rows and new ones would mix two models; restore those weights, or start again with "
                         "--overwrite")
    assert snapshot(recipe_dir) == before
    assert json.loads((recipe_dir / "run.json").read_text())["model_sha256"]  # recorded


# --- train into a run whose metrics.json is gone -----------------------------------------------------------
@pytest.mark.parametrize("left, resume", [("attack", False), ("evaluate", False), ("model", False),
                                          ("attack", True)])
def test_train_refuses_a_run_whose_metrics_are_gone_but_whose_results_remain(capsys, tmp_path, run_config,
                                                                             left, resume):
    cfg = run_config(train="max_steps = 1")
    run = tmp_path / "run"
    assert main(["train", str(cfg)]) == 0
    (run / "metrics.json").unlink()
    if left != "model":
        (run / left / "x").mkdir(parents=True)
        (run / left / "x" / "summary.json").write_text("{}")
    else:
        assert (run / "model" / "model.safetensors").is_file()
    before = snapshot(run)
    line = error_line(capsys, ["train", cfg, *(["--resume"] if resume else [])])
    assert line.startswith(f"advrobust train: error: run directory {run} holds ")
    assert f"{left}/" in line and "would leave them describing another model" in line
    assert snapshot(run) == before


def test_train_into_a_run_directory_with_only_a_log_is_accepted(tmp_path, run_config):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("an earlier attempt that failed before training\n")
    (run / "attack").mkdir()  # an empty folder left by a refused attack
    assert main(["train", str(run_config(train="max_steps = 1"))]) == 0


def test_train_into_a_run_directory_with_only_caches_and_locks_is_accepted(tmp_path, run_config):
    """Dot-named files and folders are caches and locks, not results (a bench's pre-flight caches the
    recipes' assets in the first run's attack/.cache before that run trains)."""
    run = tmp_path / "run"
    (run / "attack" / ".cache" / "textattack").mkdir(parents=True)
    (run / "attack" / ".cache" / "textattack" / "derived.pkl").write_bytes(b"assets")
    (run / "attack" / "pwws").mkdir()
    (run / "attack" / "pwws" / ".lock").write_text("pid 1")
    assert main(["train", str(run_config(train="max_steps = 1"))]) == 0


def test_a_fresh_bench_without_an_attack_cache_dir_trains_every_run(tmp_path, tiny_bert_dir, toy_data, monkeypatch):
    """The default cache (RUN/attack/.cache of the first run, filled by the pre-flight in a process that has
    not imported TextAttack yet: put there by hand, since this test process may have) must not make that
    run's training refuse its directory."""
    import tomli_w
    from attack_support import nltk_data_dir

    monkeypatch.delenv("TA_CACHE_DIR", raising=False)
    out = tmp_path / "bench"
    config = {"bench": {"defences": ["vanilla", "fgm"], "recipes": ["deepwordbug"], "out_dir": str(out),
                        "max_parallel": 1},
              "model": {"backbone": str(tiny_bert_dir), "num_labels": 2, "max_length": 32},
              "data": {"train_file": str(toy_data["train"]), "dev_file": str(toy_data["dev"])},
              "train": {"max_steps": 2, "batch_size": 16, "lr": 5e-3, "seed": 7},
              "attack": {"profile": "stock", "num_examples": 2, "seed": 3, "workers": 1,
                         "nltk_data": nltk_data_dir()}}
    (tmp_path / "bench.toml").write_text(tomli_w.dumps(config))
    cache = out / "runs" / "vanilla" / "attack" / ".cache" / "textattack"
    cache.mkdir(parents=True)
    (cache / "derived-assets.pkl").write_bytes(b"what the pre-flight caches")
    assert main(["bench", str(tmp_path / "bench.toml"), "--no-progress"]) == 0
    for run in ("vanilla", "fgm"):
        assert (out / "runs" / run / "attack" / "deepwordbug" / "summary.json").is_file()


# --- a refused bench rerun writes nothing -------------------------------------------------------------------
def test_a_bench_rerun_with_reordered_seeds_is_refused_before_bench_json_is_rewritten(capsys, tmp_path,
                                                                                    tiny_bert_dir, toy_data):
    from asa_plugin.bench.grid import write_bench_file
    from asa_plugin.bench.plan import BENCH_FILE, load_plan

    config = tmp_path / "bench.toml"
    config.write_text(f'[bench]\ndefences = ["vanilla"]\nrecipes = ["deepwordbug"]\nseeds = [42, 43]\n'
                      f'out_dir = "{tmp_path / "bench"}"\n[model]\nbackbone = "{tiny_bert_dir}"\nmax_length = 32\n'
                      f'[data]\ntrain_file = "{toy_data["train"]}"\ndev_file = "{toy_data["dev"]}"\n'
                      f'[train]\nmax_steps = 1\n[attack]\nnum_examples = 2\ndownload = false\n')
    plan = load_plan(config)
    write_bench_file(plan)  # the finished bench's record, and its two trained runs
    for cell in plan.cells:
        cell.run_dir.mkdir(parents=True)
        (cell.run_dir / "config.resolved.toml").write_text(f"[train]\nseed = {cell.seed}\n")
    before = (tmp_path / "bench" / BENCH_FILE).read_bytes()
    line = error_line(capsys, ["bench", config, "--set", "bench.seeds=[43, 42]"])
    assert "was trained with train.seed = 42, but the grid gives run" in line
    assert (tmp_path / "bench" / BENCH_FILE).read_bytes() == before
