"""Bad input is one line naming what is wrong and what to do, exit 2, no traceback.

One test per defect class found by the issue-14 probe; each asserts the exact line the user sees.
The commands run in process (``asa_plugin.cli.main``), so a traceback would fail the test.
"""

from __future__ import annotations

import json
import shutil
import struct
import types
from pathlib import Path

import pytest

from asa_plugin.cli import main
from asa_plugin.config import load_config
from asa_plugin.hookspecs import hookimpl

SECTIONS = "attack, data, defence, model, output, plugins, train"


def one_line(capsys, argv: list, code: int = 2) -> str:
    """Run ``advrobust ARGV``; assert exit ``code`` and exactly one stderr line; return it."""
    assert main([str(a) for a in argv]) == code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def fill(template: str, **values) -> str:
    """``template`` with each ``{name}`` replaced (other braces are part of the message)."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", str(value))
    return template


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


# --- config files and --set overrides --------------------------------------------------------------
CONFIG_CASES = [
    # (config file name, its text, --set overrides, the message after "advrobust train: error: ")
    ("c.toml", "[train]\nmax_steps = 1\n", ["output.run_dir=runs/{foo}"],
     "--set 'output.run_dir=runs/{foo}': output.run_dir 'runs/{foo}': unknown placeholder {foo}; the only "
     "placeholders are {defence} and {backbone} (write {{ and }} for literal braces)"),
    ("c.toml", "[train]\nmax_steps = 1\n", ["bogus.x=1"],
     f"--set 'bogus.x=1': unknown section [bogus]; allowed sections: {SECTIONS}"),
    ("c.toml", "[train]\nmax_steps = 1\n", ["train.lr=inf"],
     "--set 'train.lr=inf': train.lr must be a finite number, got inf"),
    ("c.toml", "[train]\nmax_steps = 1\n", ["train.epochs=abc"],
     "--set 'train.epochs=abc': train.epochs must be int, got 'abc'"),
    ("c.toml", "# only a comment\n", [],
     "{cfg}: the config is empty; it would train the default job (all of SST-2, 3 epochs: hours on a CPU). "
     "Give at least [data] and [train], e.g. copy examples/quickstart.toml"),
    ("c.yaml", "train:\n  lr: 1.0\ntrain:\n  epochs: 1\n", [],
     "{cfg}: cannot parse: line 3: duplicate key 'train' (first at line 1); keep one"),
    ("c.yaml", "train:\n  lr: [1, 2\n  epochs: 1\n", [],
     "{cfg}: cannot parse: line 3, column 9: expected ',' or ']', but got ':'"),
]


@pytest.mark.parametrize("name,text,overrides,expected", CONFIG_CASES)
def test_config_and_override_errors_name_their_origin(capsys, tmp_path, name, text, overrides, expected):
    cfg = write(tmp_path / name, text)
    sets = [a for o in overrides for a in ("--set", o)]
    assert one_line(capsys, ["train", cfg, *sets]) == "advrobust train: error: " + fill(expected, cfg=cfg)


def test_yaml_reads_exponent_floats_as_toml_does(tmp_path):
    cfg = write(tmp_path / "c.yaml", "train:\n  lr: 2e-5\n")
    assert load_config(cfg).train.lr == pytest.approx(2e-5)


def test_a_directory_given_as_config_or_data_file_says_so(capsys, tmp_path):
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    assert one_line(capsys, ["train", folder]) == (
        f"advrobust train: error: {folder}: is a directory; give a config file (.toml, .yaml or .yml)")
    cfg = write(tmp_path / "c.toml", f"[data]\ntrain_file = '{tmp_path}'\ndev_file = '{tmp_path}'\n")
    assert one_line(capsys, ["train", cfg]) == (
        f"advrobust train: error: {cfg}: data.train_file {tmp_path} is a directory; give a .tsv, .csv, .jsonl "
        f"or .parquet file")


# --- data files -----------------------------------------------------------------------------------
DATA_CASES = [
    ("train.tsv", b"sentence\tlabel\ngood\t1\nbad \xff\xfe film\t0\n",
     "{f}: line 3: bytes that are not UTF-8 (byte 26); save the file as UTF-8"),
    ("train.jsonl", b'{"text": "good", "label": 1}\n{"text": "bad", "label": 0\n{"text": "ok", "label": 1}\n',
     "{f}: line 2: not valid JSON (Expecting ',' delimiter); one JSON object per line"),
    ("train.jsonl", b'{"text": "good", "label": 1}\n[1, 2]\n', "{f}: line 2: expected a JSON object, got list"),
]


@pytest.mark.parametrize("name,content,expected", DATA_CASES)
def test_a_bad_data_row_is_named_by_file_and_line(capsys, run_config, tmp_path, name, content, expected):
    data = write(tmp_path / name, content)
    cfg = run_config(extra={"data": {"train_file": str(data)}})
    assert one_line(capsys, ["train", cfg]) == "advrobust train: error: " + fill(expected, f=data)


# --- model directories ----------------------------------------------------------------------------
def _model_case(kind: str, root: Path, tiny: Path) -> Path | str:
    if kind == "truncated":
        model = Path(shutil.copytree(tiny, root / "truncated"))
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return model
    if kind == "no_model_type":
        model = Path(shutil.copytree(tiny, root / "no-type"))
        config = json.loads((model / "config.json").read_text())
        config.pop("model_type")
        (model / "config.json").write_text(json.dumps(config))
        return model
    if kind == "empty":
        (root / "vanilla-minilm").mkdir()
        return root / "vanilla-minilm"
    if kind == "unfinished_run":
        write(root / "run" / "config.resolved.toml", "[train]\n")
        return root / "run"
    if kind == "weights_file":
        return tiny / "model.safetensors"
    return "./no-such-model"  # as typed: a relative path, not a hub name


def _truncated_size(model: Path) -> tuple[int, int]:
    data = (model / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    return len(data), 8 + length + max(t["data_offsets"][1] for k, t in header.items() if k != "__metadata__")


MODEL_CASES = [
    ("truncated", "--model {m}/model.safetensors is truncated or damaged ({size} bytes where the header describes "
                  "{full}); copy or save the model again"),
    ("no_model_type", "--model {m}/config.json has no model_type, so the architecture is unknown; add it (e.g. "
                      "\"model_type\": \"bert\") or save the model again with save_pretrained"),
    ("empty", "--model {m} has no config.json: not a model directory (give a run directory of `advrobust train` "
              "or a folder written by save_pretrained)"),
    ("unfinished_run", "--model {m} is a run directory with no trained model (no model/): its training has not "
                       "finished; finish it with `advrobust train CONFIG --resume`"),
    ("weights_file", "--model {m} is a file; give the directory holding it and its config.json"),
    ("missing", "--model {m}: directory not found"),
]


@pytest.mark.parametrize("kind,expected", MODEL_CASES)
def test_a_model_that_cannot_load_is_one_line_before_any_import(capsys, tmp_path, tiny_bert_dir, toy_data, kind,
                                                                 expected):
    model = _model_case(kind, tmp_path, tiny_bert_dir)
    size, full = _truncated_size(model) if kind == "truncated" else (0, 0)
    line = one_line(capsys, ["attack", "--model", model, "--recipe", "deepwordbug", "--data-file", toy_data["dev"],
                             "--out", tmp_path / "out"])
    assert line == "advrobust attack: error: " + fill(expected, m=model, size=size, full=full)


def test_a_truncated_backbone_fails_training_before_it_loads(capsys, run_config, tmp_path, tiny_bert_dir):
    model = _model_case("truncated", tmp_path, tiny_bert_dir)
    size, full = _truncated_size(model)
    cfg = run_config(backbone=model)
    assert one_line(capsys, ["train", cfg]) == (
        f"advrobust train: error: {cfg}: model.backbone {model}/model.safetensors is truncated or damaged "
        f"({size} bytes where the header describes {full}); copy or save the model again")


def test_asa_maps_on_a_missing_run_directory(capsys, tmp_path):
    assert one_line(capsys, ["asa-maps", tmp_path / "nope", "--text", "good film"]) == (
        f"advrobust asa-maps: error: {tmp_path / 'nope'}: run directory not found; give the run directory of an "
        f"`advrobust train` run with defence asa")


# --- attack outputs and options -------------------------------------------------------------------
def test_an_attack_output_that_cannot_be_written(capsys, tmp_path, tiny_bert_dir, toy_data):
    blocker = write(tmp_path / "blocker", "a file")
    argv = ["attack", "--model", tiny_bert_dir, "--recipe", "deepwordbug", "--data-file", toy_data["dev"]]
    assert one_line(capsys, [*argv, "--out", blocker / "out"]) == (
        f"advrobust attack: error: attack output {blocker / 'out'}: {blocker} is a file, not a directory; choose "
        f"another with --out DIR")
    line = one_line(capsys, [*argv, "--out", "/proc/advrobust-out"])
    assert line.startswith("advrobust attack: error: attack output /proc/advrobust-out is not writable (")
    assert line.endswith("); choose another with --out DIR")


ATTACK_OPTION_CASES = [
    (["--shard", "-1/2"], "--shard '-1/2': need 0 <= I < N (shards are numbered from 0)"),
    (["--resume", "--overwrite"], "--resume and --overwrite contradict each other: --resume continues earlier "
                                  "results, --overwrite discards them; give one"),
    (["--recipe", "bogus"], "command line: attack.recipes: unknown recipe 'bogus'; available: {recipes}"),
]


@pytest.mark.parametrize("extra,expected", ATTACK_OPTION_CASES)
def test_attack_options(capsys, tmp_path, tiny_bert_dir, toy_data, extra, expected):
    from asa_plugin.plugins import get_plugin_manager

    recipes = ", ".join(get_plugin_manager().recipes.names())
    line = one_line(capsys, ["attack", "--model", tiny_bert_dir, "--recipe", "deepwordbug", "--data-file",
                             toy_data["dev"], "--out", tmp_path / "out", *extra])
    assert line == "advrobust attack: error: " + fill(expected, recipes=recipes)


# --- damaged result files: named by file and line, left untouched ----------------------------------
ROW = {"index": 0, "outcome": "failed", "seconds": 0.1}
RESULTS_CASES = [
    (json.dumps(ROW) + "\n{broken\n" + json.dumps(ROW | {"index": 1}) + "\n",
     "line 2: not valid JSON (Expecting property name enclosed in double quotes)"),
    (json.dumps(ROW) + "\n[1, 2]\n", "line 2: expected a JSON object, got list"),
    (json.dumps({"index": 0, "seconds": 0.1}) + "\n", "line 1: a result row with no 'outcome'"),
]
UNTOUCHED = "the file was left untouched: remove or fix that line (it is attacked again), or rerun with --overwrite"


@pytest.mark.parametrize("content,expected", RESULTS_CASES)
def test_resume_over_a_damaged_results_file(capsys, tmp_path, tiny_bert_dir, toy_data, content, expected):
    results = write(tmp_path / "out" / "attack" / "deepwordbug" / "results.jsonl", content)
    line = one_line(capsys, ["attack", "--model", tiny_bert_dir, "--recipe", "deepwordbug", "--data-file",
                             toy_data["dev"], "--out", tmp_path / "out", "--resume"])
    assert line == f"advrobust attack: error: {results}: {expected}; {UNTOUCHED}"
    assert results.read_text() == content


def test_merge_over_a_damaged_shard(capsys, tmp_path):
    shard = tmp_path / "run" / "attack" / "pwws" / "shards" / "0-of-1"
    write(shard / "summary.json", json.dumps({"assets": []}))
    write(shard / "run.json", json.dumps({"shard": [0, 1], "selection_size": 2}))
    results = write(shard / "results.jsonl", json.dumps(ROW) + "\nnot json\n")
    assert one_line(capsys, ["merge", tmp_path / "run"]) == (
        f"advrobust merge: error: {results}: line 2: not valid JSON (Expecting value); "
        + UNTOUCHED.replace("rerun with --overwrite", f"move {results} away to start it again"))


REPORT_CASES = [
    ("runs/vanilla/metrics.json", '{"eval_accuracy": 0.8, "steps"',
     "{p}: line 1: damaged metrics.json (not valid JSON); it was left untouched: restore it, or delete it to redo "
     "that step"),
    ("runs/vanilla/attack/pwws/summary.json", '{"recipe": "pw',
     "{p}: line 1: damaged summary.json (not valid JSON); it was left untouched: restore it, or delete it to redo "
     "that step"),
    ("bench.json", '["vanilla"]',
     "{p}: not a bench file written by `advrobust bench` (no list/table 'defences'); rerun `advrobust bench "
     "CONFIG` to rewrite it"),
]


@pytest.mark.parametrize("name,content,expected", REPORT_CASES)
def test_report_over_damaged_files(capsys, tmp_path, name, content, expected):
    write(tmp_path / "bench.json", json.dumps({"defences": ["vanilla"], "recipes": ["pwws"], "settings": {}}))
    damaged = write(tmp_path / name, content)
    assert one_line(capsys, ["report", tmp_path]) == "advrobust report: error: " + fill(expected, p=damaged)
    assert damaged.read_text() == content


# --- plugins ----------------------------------------------------------------------------------------
def _external(monkeypatch, **hooks):
    """Install a third-party plugin 'acme' (an entry point) providing ``hooks``."""
    import asa_plugin.plugins as plugins

    module = types.ModuleType("acme_plugin")
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    entry = types.SimpleNamespace(name="acme", value="acme_plugin", dist=None, load=lambda: module)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [entry])
    plugins._cached_manager_env.cache_clear()


@pytest.fixture
def fresh_plugins():
    import asa_plugin.plugins as plugins

    plugins._cached_manager_env.cache_clear()
    yield
    plugins._cached_manager_env.cache_clear()


def _boom(register):
    raise RuntimeError("no licence file")


PLUGIN_CASES = [
    (_boom, "plugin 'acme' failed in advrobust_register_defences: RuntimeError: no licence file; fix or uninstall "
            "it, or set ADVROBUST_DISABLE_PLUGINS=acme"),
    (lambda register: register("smooth", "SmoothDefence"),
     "plugin 'acme' registered defence 'smooth' as 'SmoothDefence', which is not a subclass of "
     "asa_plugin.defences.base.Defence; fix the plugin, or block it with ADVROBUST_DISABLE_PLUGINS=acme"),
]


@pytest.mark.parametrize("hook,expected", PLUGIN_CASES)
def test_a_broken_plugin_is_one_line_at_registration(capsys, monkeypatch, fresh_plugins, hook, expected):
    _external(monkeypatch, advrobust_register_defences=hook)
    assert one_line(capsys, ["plugins"]) == "advrobust plugins: error: " + expected


@pytest.mark.parametrize("env", ["garbage", "acme,garbage"])
def test_blocking_a_plugin_that_is_not_installed_warns(capsys, monkeypatch, fresh_plugins, env):
    _external(monkeypatch)
    monkeypatch.setenv("ADVROBUST_DISABLE_PLUGINS", env)
    assert one_line(capsys, ["plugins"], code=0) == (
        "warning: ADVROBUST_DISABLE_PLUGINS / [plugins] block names 'garbage', which is no installed plugin "
        "(installed: acme); use entry-point names from `advrobust plugins`, or ADVROBUST_DISABLE_PLUGINS=1 to "
        "block all")


# --- training labels: inference refuses what it would turn into a class (issue 21) ----------------
def _inferring_config(tmp_path: Path, tiny: Path, train: Path, data: dict | None = None) -> Path:
    """A run config on ``train`` with no model.num_labels, so the classes are inferred from the file."""
    import tomli_w

    config = {"model": {"backbone": str(tiny), "max_length": 32},
              "data": {"train_file": str(train), "dev_file": str(train), **(data or {})},
              "train": {"max_steps": 1, "batch_size": 4}, "output": {"run_dir": str(tmp_path / "run")}}
    return write(tmp_path / "c.toml", tomli_w.dumps(config))


def _tsv(labels: list, text: str = "good film") -> str:
    return "text\tlabel\n" + "".join(f"{text} {i}\t{label}\n" for i, label in enumerate(labels))


FIX = "fix that row, or name every label in data.label_names (or set model.num_labels) to keep it"
LABEL_CASES = [
    # (train file name, its text, [data] settings, the message after "{f}: ")
    ("train.tsv", _tsv([0, 1, 0, 9, 1]), {},
     f"row 4: label 9, but no row has label 2 (the others are 0, 1): inferred classes would include empty ones; "
     f"{FIX}"),
    ("train.tsv", _tsv([0, 1, "NaN", 1]), {}, f"row 3: label 'NaN' is not an integer like the others (0, 1); {FIX}"),
    ("train.tsv", _tsv([0, 1, 1.5, 1]), {}, f"row 3: label 1.5 is not an integer like the others (0, 1); {FIX}"),
    ("train.jsonl", "".join(json.dumps({"text": "a", "label": v}) + "\n" for v in [1, 0, "1x"]), {},
     f"row 3: label '1x' is not an integer like the others (0, 1); {FIX}"),
    ("train.tsv", _tsv(["pos"] * 10 + ["neg"] * 10 + ["postive"]), {},
     f"row 21: label 'postive' is on this row only, while each other label (neg, pos) has 10 or more: a typo? "
     f"{FIX}"),
    ("train.tsv", _tsv([1, 2, 2, 1]), {},
     "no row has label 0 (the labels are 1, 2): integer labels are class ids 0..N-1; name them in "
     "data.label_names (e.g. label_names = ['1', '2']) or set model.num_labels"),
    ("train.tsv", _tsv([1, 1, 1]), {},
     "every row has label 1: a classifier needs examples of at least two classes; check data.label_column and "
     "the file"),
    ("train.tsv", _tsv([0, 0]), {},
     "every row has label 0: a classifier needs examples of at least two classes; check data.label_column and "
     "the file"),
    ("train.tsv", _tsv(["neg", "pos", "neg"]), {"label_names": ["neg", "pos", "neutral"]},
     "data.label_names lists neutral, which no training row has; remove it from data.label_names, or add such "
     "examples"),
    ("train.tsv", _tsv([0, 1, 0]), {"text_column": "label"},
     "data.text_column 'label' is also data.label_column: the model would read its answer; set data.text_column "
     "to a column of texts (columns are text)"),
]


@pytest.mark.parametrize("name,text,data,expected", LABEL_CASES)
def test_label_inference_refuses_stray_values(capsys, tmp_path, tiny_bert_dir, name, text, data, expected):
    train = write(tmp_path / name, text)
    cfg = _inferring_config(tmp_path, tiny_bert_dir, train, data)
    assert one_line(capsys, ["train", cfg]) == f"advrobust train: error: {train}: {expected}"
    assert not (tmp_path / "run" / "model").exists()


ROW_CASES = [
    # (file name, text, the message after "{f}: "): every row is checked, not only the first
    ("train.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n{"txt": "c", "label": 1}\n',
     "row 3: no 'text' (its columns are txt, label); every row needs text, label"),
    ("train.jsonl", '{"text": "a", "label": 0}\n{"text": "b"}\n',
     "row 2: no 'label' (its columns are text); every row needs text, label"),
    ("train.json", '[{"text": "a", "label": 0}, {"text": "b", "label": 1}, ["c", 1]]',
     "row 3: expected a record (an object of columns), got list; fix that row"),
    ("train.json", '{"sst2": [{"text": "a", "label": 0}, 7]}',
     "row 2: expected a record (an object of columns), got int; fix that row"),
]


@pytest.mark.parametrize("name,text,expected", ROW_CASES)
def test_every_row_of_a_data_file_is_checked(capsys, run_config, tmp_path, name, text, expected):
    data = write(tmp_path / name, text)
    cfg = run_config(extra={"data": {"train_file": str(data)}})
    assert one_line(capsys, ["train", cfg]) == f"advrobust train: error: {data}: {expected}"


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_data_root_that_is_no_directory_says_so(capsys, monkeypatch, tmp_path, tiny_bert_dir, kind):
    import tomli_w

    root = tmp_path / "data-root"
    if kind == "file":
        write(root, "not a folder")
    monkeypatch.setenv("ADVROBUST_DATA_DIR", str(root))
    config = {"model": {"backbone": str(tiny_bert_dir), "num_labels": 2}, "data": {"dataset": "sst2"},
              "train": {"max_steps": 1}, "output": {"run_dir": str(tmp_path / "run")}}
    cfg = write(tmp_path / "c.toml", tomli_w.dumps(config))
    problem = "no such directory" if kind == "missing" else "is a file, not a directory"
    assert one_line(capsys, ["train", cfg]) == (
        f"advrobust train: error: ADVROBUST_DATA_DIR={root}: {problem}; point it at the folder holding "
        f"sst2/train.tsv, or unset it")


# --- seeds and thread counts out of range, found before any work ------------------------------------
RANGE_CASES = [
    (["train.seed=-1"], "--set 'train.seed=-1': train.seed must be >= 0, got -1 (numpy seeds are 0..2**32-1)"),
    (["train.seed=4294967296"], "--set 'train.seed=4294967296': train.seed must be <= 4294967295, got 4294967296 "
                                "(numpy seeds are 0..2**32-1)"),
    (["train.threads=100000"], "--set 'train.threads=100000': train.threads must be <= 1024, got 100000 (threads "
                               "beyond the CPU cores only slow torch down)"),
]


@pytest.mark.parametrize("overrides,expected", RANGE_CASES)
def test_seeds_and_threads_out_of_range(capsys, run_config, overrides, expected):
    sets = [a for o in overrides for a in ("--set", o)]
    assert one_line(capsys, ["train", run_config(), *sets]) == "advrobust train: error: " + expected


def test_attack_threads_are_bounded(capsys, tmp_path, tiny_bert_dir, toy_data):
    line = one_line(capsys, ["attack", "--model", tiny_bert_dir, "--recipe", "deepwordbug", "--data-file",
                             toy_data["dev"], "--out", tmp_path / "out", "--threads", "100000"])
    assert line == ("advrobust attack: error: command line: attack.threads must be <= 1024, got 100000 (threads "
                    "beyond the CPU cores only slow torch down)")


def test_bench_seeds_out_of_numpy_range(capsys, tmp_path, tiny_bert_dir, toy_data):
    cfg = write(tmp_path / "bench.toml", f"""[bench]
defences = ["vanilla"]
recipes = ["deepwordbug"]
seeds = [42, 4294967296]
out_dir = "{tmp_path / 'bench'}"
[model]
backbone = "{tiny_bert_dir}"
[data]
train_file = "{toy_data['train']}"
dev_file = "{toy_data['dev']}"
""")
    assert one_line(capsys, ["bench", cfg]) == (
        f"advrobust bench: error: {cfg}: [bench] bench.seeds: 4294967296 is not a seed (numpy seeds are 0..2**32-1)")
    assert not (tmp_path / "bench").exists()


# --- evaluate: damaged static sets, unfinished runs, unwritable outputs, hints that apply --------------
def _sst2_run(root: Path, tiny: Path) -> Path:
    """A finished run directory of a model trained on sst2 (so evaluate looks for the AdvGLUE task)."""
    shutil.copytree(tiny, root / "run" / "model")
    write(root / "run" / "config.resolved.toml", "[data]\ndataset = \"sst2\"\n")
    return root / "run"


MODEL_FIX = "the model's classes are fixed: fix the file, or use a model trained with these labels"
EVALUATE_CASES = [
    # (file name, its content, the message after "advrobust evaluate: error: {f}: ")
    ("dev.json", '{"sst2": [{"sentence": "a", "label": 1}', "cannot parse: Expecting ',' delimiter: line 1 column "
                                                            "40 (char 39)"),
    ("dev.json", b'{"sst2": [{"sentence": "caf\xe9", "label": 1}]}', "line 1: bytes that are not UTF-8 (byte 27); "
                                                                    "save the file as UTF-8"),
    ("dev.json", '{"sst2": [{"sentence": "a", "label": 1}, {"label": 0}]}',
     "row 2: no 'sentence' (its columns are label); every row needs sentence, label"),
    ("dev.tsv", "sentence\tlabel\ngood\t1\nbad\t5\n", f"row 2: label 5 outside 0..1; {MODEL_FIX}"),
    ("dev.tsv", "sentence\tlabel\ngood\tpos\n",
     "row 1: label 'pos' is not an integer; the model's 2 classes have no names, so give their ids 0..1"),
]


@pytest.mark.parametrize("name,content,expected", EVALUATE_CASES)
def test_evaluate_on_a_bad_static_set(capsys, tmp_path, tiny_bert_dir, name, content, expected):
    run = _sst2_run(tmp_path, tiny_bert_dir)
    data = write(tmp_path / name, content)
    where = f"{data} [sst2]" if expected.startswith("row") and name.endswith(".json") else data
    assert one_line(capsys, ["evaluate", run, "--data-file", data]) == f"advrobust evaluate: error: {where}: {expected}"
    assert not (run / "evaluate").exists()


def test_evaluate_on_an_unfinished_run_or_into_an_unwritable_out(capsys, tmp_path, tiny_bert_dir, toy_data):
    unfinished = write(tmp_path / "unfinished" / "config.resolved.toml", "[train]\n").parent
    assert one_line(capsys, ["evaluate", unfinished, "--data-file", toy_data["dev"]]) == (
        f"advrobust evaluate: error: RUN {unfinished} is a run directory with no trained model (no model/): its "
        f"training has not finished; finish it with `advrobust train CONFIG --resume`")
    blocker = write(tmp_path / "blocker", "a file")
    run = _sst2_run(tmp_path, tiny_bert_dir)
    assert one_line(capsys, ["evaluate", run, "--data-file", toy_data["dev"], "--out", blocker / "out"]) == (
        f"advrobust evaluate: error: evaluate output {blocker / 'out'}: {blocker} is a file, not a directory; "
        f"choose another with --out DIR")


def test_a_bench_static_set_hint_names_the_bench_setting(capsys, tmp_path, tiny_bert_dir, toy_data):
    advglue = write(tmp_path / "dev.json", json.dumps({"sst2": [], "qqp": []}))
    cfg = write(tmp_path / "bench.toml", f"""[bench]
defences = ["vanilla"]
recipes = ["deepwordbug"]
static_sets = ["{advglue}"]
out_dir = "{tmp_path / 'bench'}"
[model]
backbone = "{tiny_bert_dir}"
[data]
train_file = "{toy_data['train']}"
dev_file = "{toy_data['dev']}"
""")
    assert one_line(capsys, ["bench", cfg]) == (
        f"advrobust bench: error: {advglue}: holds several tasks; tasks: sst2, qqp; name it in bench.static_sets as "
        f"FILE#TASK, e.g. '{advglue}#<task>'")
    assert not (tmp_path / "bench" / "runs").exists()


# --- texts with nothing to perturb are counted apart, not as failed attacks ----------------------------
def test_texts_with_no_word_to_perturb_are_unperturbable(capsys, tmp_path, tiny_bert_dir):
    texts = ["", "   ", "\U0001F600 \U0001F389", "the film was good", "bad awful plot"]
    data = write(tmp_path / "dev.tsv", "sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(texts)))
    assert main([str(a) for a in ["attack", "--model", tiny_bert_dir, "--recipe", "deepwordbug", "--data-file", data,
                                  "--out", tmp_path / "out", "--no-progress"]]) == 0
    out = tmp_path / "out" / "attack" / "deepwordbug"
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["outcome"] == "unperturbable" for r in rows] == [True, True, True, False, False]
    summary = json.loads((out / "summary.json").read_text())
    attacked = rows[3:]
    decided = [r for r in attacked if r["outcome"] in ("successful", "failed")]
    assert (summary["num_examples"], summary["unperturbable"]) == (5, 3)
    assert summary["clean_accuracy"] == sum(r["outcome"] != "skipped" for r in attacked) / 2
    assert summary["accuracy_under_attack"] == sum(r["outcome"] in ("failed", "maximized") for r in attacked) / 2
    assert summary["attack_success_rate"] == (sum(r["outcome"] == "successful" for r in decided) / len(decided)
                                              if decided else None)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["unperturbable"] == 3


# --- words beyond max_length are not attacked nor counted -------------------------------------------
def test_a_text_longer_than_max_length_is_attacked_up_to_what_the_model_sees(capsys, tmp_path, tiny_bert_dir):
    from tiny import WORDS
    from transformers import AutoTokenizer

    from asa_plugin.cli import build_parser
    from asa_plugin.commands.attack import build_jobs

    long_text = " ".join(WORDS[i % len(WORDS)] for i in range(0, 120, 3))  # 40 words, each one token
    data = write(tmp_path / "dev.tsv", f"sentence\tlabel\n{long_text}\t1\nthe film was good\t0\n")
    argv = ["attack", "--model", tiny_bert_dir, "--recipe", "deepwordbug", "--data-file", data, "--out",
            tmp_path / "out", "--set", "model.max_length=16", "--seed", "0"]
    _, (job,) = build_jobs(build_parser().parse_args([str(a) for a in argv]))
    assert capsys.readouterr().err.strip() == (
        "advrobust attack: note: 1 of 2 examples are longer than max_length = 16 tokens; each is attacked (and its "
        "words counted) up to the last word the model sees")
    (cut,) = [t for t in job.texts if t != "the film was good"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    seen = tokenizer(long_text, truncation=True, max_length=16)["input_ids"]
    assert long_text.startswith(cut) and tokenizer(cut)["input_ids"] == seen  # exactly what the model sees
    assert len(cut.split()) == 14  # 16 tokens less [CLS] and [SEP]: what words-perturbed counts
    assert "the film was good" in job.texts


def test_a_long_text_pair_is_cut_where_the_model_cuts_it(tiny_bert_dir):
    from asa_plugin.attacks.visible import visible_texts
    from tiny import WORDS
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    short, long = "the film", " ".join(WORDS[:30])
    texts, pairs, cut = visible_texts(tokenizer, [short, long], [long, short], 16)
    assert cut == 2
    for (first, second), (full_first, full_second) in zip(zip(texts, pairs), [(short, long), (long, short)]):
        assert full_first.startswith(first) and full_second.startswith(second)
        assert tokenizer(first, second)["input_ids"] == tokenizer(full_first, full_second, truncation=True,
                                                                  max_length=16)["input_ids"]
    assert (texts[0], pairs[1]) == (short, short)  # the shorter text of a pair is never cut
    assert visible_texts(tokenizer, [short], None, 16) == ([short], None, 0)


# --- a model trained on text pairs is not attacked or evaluated on single texts (nor the reverse) -------
PAIRS = "premise\thypothesis\tlabel\nthe film\tit was good\t1\nthe plot\tit was bad\t0\n"
SINGLE = "sentence\tlabel\nthe film was good\t1\nthe plot was bad\t0\n"
INPUT_CASES = [
    # (what the run trained on: [data] of config.resolved.toml, or a file's text), command, data given, message
    (PAIRS, "evaluate", SINGLE, "{data} holds single texts, but the model of {run} was trained on text pairs "
     "({train}): its predictions would mean nothing; give data with both texts (data.text_pair_column names the "
     "second), or evaluate another model"),
    (PAIRS, "attack", SINGLE, "{data}:dev holds single texts, but the model of {run} was trained on text pairs "
     "({train}): its predictions would mean nothing; give data with both texts (data.text_pair_column names the "
     "second), or attack another model"),
    (SINGLE, "evaluate", PAIRS, "{data} holds text pairs, but the model of {run} was trained on single texts "
     "({train}): its predictions would mean nothing; give data with one text column (set data.text_column), or a "
     "model trained on pairs, or evaluate another model"),
    ({"dataset": "mnli"}, "evaluate", SINGLE, "{data} holds single texts, but the model of {run} was trained on "
     "text pairs (dataset 'mnli'): its predictions would mean nothing; give data with both texts "
     "(data.text_pair_column names the second), or evaluate another model"),
]


@pytest.mark.parametrize("trained,command,given,expected", INPUT_CASES)
def test_pairs_and_single_texts_match_what_the_model_was_trained_on(capsys, tmp_path, tiny_bert_dir, trained,
                                                                     command, given, expected):
    import tomli_w

    run = tmp_path / "run"
    shutil.copytree(tiny_bert_dir, run / "model")
    if isinstance(trained, str):
        train = write(tmp_path / "train.tsv", trained)
        trained = {"train_file": str(train), "dataset": "none"}
    else:
        train = f"dataset '{trained['dataset']}'"
    write(run / "config.resolved.toml", tomli_w.dumps({"data": trained}))
    data = write(tmp_path / "given.tsv", given)
    argv = (["evaluate", run, "--data-file", data] if command == "evaluate" else
            ["attack", "--model", run, "--recipe", "deepwordbug", "--data-file", data, "--out", tmp_path / "out"])
    assert one_line(capsys, argv) == f"advrobust {command}: error: " + fill(expected, data=data, run=run, train=train)


# --- a full disk (or quota, read-only file system) while writing is one line, not a traceback -----------
NO_SPACE = "No space left on device"
WRITE_FAILURES = [
    # (exception, command, the line after "error: ", or None: not a write failure, re-raised)
    (OSError(28, NO_SPACE, "run/metrics.json"), "train",
     f"cannot write run/metrics.json: {NO_SPACE}; free space (or choose another output directory), then rerun "
     f"the same command with --resume (the last checkpoint is kept)"),
    (OSError(122, "Disk quota exceeded"), "attack",
     "cannot write: Disk quota exceeded; free space (or choose another output directory), then rerun the same "
     "command with --resume (finished examples are kept)"),
    (OSError(30, "Read-only file system", "b/x"), "bench",
     "cannot write b/x: Read-only file system; choose an output directory you can write (or make this one "
     "writable), then rerun the same command (finished cells are kept)"),
    (RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left "
                  "on device\" })"), "evaluate",
     f"cannot write: {NO_SPACE}; free space (or choose another output directory), then rerun the same command"),
    # torch.save (its C++ zip writer) on a nearly full tmpfs: no errno, these words (found on a 3 MiB tmpfs)
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 266880 vs 266768"), "train",
     "cannot write: torch's file writer failed ([enforce fail at inline_container.cc:672] . unexpected pos 266880 "
     "vs 266768), as it does on a full disk; free space (or choose another output directory), then rerun the same "
     "command with --resume (the last checkpoint is kept)"),
    (RuntimeError("basic_ios::clear: iostream error"), "pretrain",
     "cannot write: torch's file writer failed (basic_ios::clear: iostream error), as it does on a full disk; free "
     "space (or choose another output directory), then rerun the same command with --resume (the last checkpoint "
     "is kept)"),
    (OSError(2, "No such file or directory", "x"), "train", None),
    (ValueError("a bug"), "train", None),
]


@pytest.mark.parametrize("exc,command,expected", WRITE_FAILURES)
def test_which_failures_are_a_full_disk(exc, command, expected):
    from asa_plugin import interrupts
    from asa_plugin.errors import write_failure

    interrupts.record(True, "a checkpoint was written")  # train/pretrain offer --resume only then

    assert write_failure(exc, command) == expected


def _disk_full_on(monkeypatch, name: str) -> None:
    """Writing a file called ``name`` (or its temporary ``name.tmp``) fails as on a full disk."""
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name in (name, name + ".tmp"):
            raise OSError(28, NO_SPACE)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def test_a_full_disk_while_evaluate_writes_its_summary(capsys, monkeypatch, tmp_path, tiny_bert_dir, toy_data):
    run = _sst2_run(tmp_path, tiny_bert_dir)
    _disk_full_on(monkeypatch, "summary.json")
    assert one_line(capsys, ["evaluate", run, "--data-file", toy_data["dev"], "--name", "dev"]) == (
        f"advrobust evaluate: error: cannot write {run / 'evaluate/dev/summary.json'}: {NO_SPACE}; free space (or "
        f"choose another output directory), then rerun the same command")
    assert not (run / "evaluate/dev/summary.json.tmp").exists()


def test_a_full_disk_while_train_writes_its_metrics(capsys, monkeypatch, run_config, tmp_path):
    _disk_full_on(monkeypatch, "metrics.json")
    cfg = run_config(train="max_steps = 1")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err  # the progress of the one step, then the error
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"advrobust train: error: cannot write {tmp_path / 'run' / 'metrics.json'}: {NO_SPACE}; free space (or "
        f"choose another output directory), then rerun the same command with --resume (the last checkpoint is "
        f"kept)")


def test_a_full_disk_while_train_saves_a_checkpoint(capsys, monkeypatch, run_config, tmp_path):
    """torch.save's own failure (no errno) while Accelerate writes the optimizer state: one line, and the
    previous checkpoint stays for --resume."""
    import torch

    real = torch.save
    saves = []

    def save(obj, f, *args, **kwargs):
        saves.append(str(f))
        if str(f).endswith("optimizer.bin") and sum(s.endswith("optimizer.bin") for s in saves) == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 266880 vs 266768")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    cfg = run_config(train="checkpoint_every_steps = 2")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        f"advrobust train: error: cannot write {tmp_path / 'run' / 'checkpoint.tmp'}: torch's file writer failed "
        f"([enforce fail at inline_container.cc")
    assert (tmp_path / "run" / "checkpoint" / "optimizer.bin").is_file()  # the first checkpoint, kept
    monkeypatch.setattr(torch, "save", real)
    assert main(["train", str(cfg), "--resume"]) == 0


@pytest.mark.parametrize("rank,lines", [("0", 1), ("1", 0)])
def test_only_rank_0_of_a_distributed_launch_prints_the_error(capsys, monkeypatch, tmp_path, rank, lines):
    monkeypatch.setenv("RANK", rank)
    assert main(["train", str(tmp_path / "missing.toml")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == lines


def test_an_attack_cache_that_cannot_be_written(capsys, tmp_path, tiny_bert_dir, toy_data):
    blocker = write(tmp_path / "blocker", "a file")
    argv = ["attack", "--model", tiny_bert_dir, "--recipe", "deepwordbug", "--data-file", toy_data["dev"], "--out",
            tmp_path / "out"]
    fix = "choose another with --set attack.cache_dir=DIR (or TA_CACHE_DIR)"
    assert one_line(capsys, [*argv, "--set", f"attack.cache_dir={blocker}"]) == (
        f"advrobust attack: error: attack cache {blocker}: {blocker} is a file, not a directory; {fix}")
    line = one_line(capsys, [*argv, "--set", "attack.cache_dir=/proc/advrobust-cache"])
    assert line.startswith("advrobust attack: error: attack cache /proc/advrobust-cache is not writable (")
    assert line.endswith(f"); {fix}")
    assert not (tmp_path / "out" / "attack").exists()
