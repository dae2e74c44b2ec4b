"""Third bad-input probe (issue 32): one table per class of mistake, run through ``advrobust`` itself.

Classes: every row checked, settings that leave nothing, files of the wrong kind, names that escape
their directory, data that is wrong but trains, resume that does not resume, counts that are off,
settings of the run honoured, and fixes that name a real flag or key of the command.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tomli_w
from test_bad_input import fill, one_line, write
from test_pretrain import write_corpus

from asa_plugin.cli import main

ROW = {"index": 0, "outcome": "failed", "seconds": 0.1}


def _pretrain_cfg(tmp_path: Path, tiny: Path, corpus: Path, **pretrain) -> Path:
    config = {"model": {"backbone": str(tiny), "max_length": 16},
              "pretrain": {"corpus": str(corpus), "eval_fraction": 0.1, **pretrain},
              "defence": {"name": "vanilla"},
              "train": {"max_steps": 2, "batch_size": 4, "checkpoint_every_steps": 1},
              "output": {"run_dir": str(tmp_path / "run")}}
    return write(tmp_path / "pretrain.toml", tomli_w.dumps(config))


def _attack(model, data, out, *extra) -> list:
    return ["attack", "--model", model, "--recipe", "deepwordbug", "--data-file", data, "--out", out, *extra]


# --- every row is checked, not only the first ----------------------------------------------------------
def _rows(n: int, bad: int, bad_row: dict) -> str:
    return "".join(json.dumps(bad_row if i == bad else {"text": f"good film {i}"}) + "\n" for i in range(n))


CORPUS_ROW_CASES = [
    # (corpus file name, its text, the message after "{f}: ")
    ("c.jsonl", _rows(60, 50, {"txt": "x"}), "row 51: no 'text' (its columns are txt); every row needs text"),
    ("c.jsonl", _rows(60, 50, {"text": ["a", "list"]}),
     "row 51: text is a list, not a text; every text must be a string"),
    ("c.jsonl", _rows(60, 3, 7), "line 4: expected a JSON object, got int"),
]


@pytest.mark.parametrize("name,text,expected", CORPUS_ROW_CASES)
def test_every_row_of_a_pretraining_corpus_is_checked(capsys, tmp_path, tiny_bert_dir, name, text, expected):
    corpus = write(tmp_path / name, text)
    cfg = _pretrain_cfg(tmp_path, tiny_bert_dir, corpus)
    assert one_line(capsys, ["pretrain", cfg]) == f"advrobust pretrain: error: {corpus}: {expected}"


RESULT_ROW_CASES = [
    # (the rows of results.jsonl, the problem after "{f}: ")
    ([ROW, ROW | {"index": "1"}], "line 2: index '1' is not an example number (0, 1, 2, ...)"),
    ([ROW, ROW | {"index": -1}], "line 2: index -1 is not an example number (0, 1, 2, ...)"),
    ([ROW, ROW | {"index": True}], "line 2: index True is not an example number (0, 1, 2, ...)"),
    ([ROW, ROW | {"index": 6}], "line 2: index 6 is beyond the 2 examples attacked (0..1)"),
]
UNTOUCHED = "the file was left untouched: remove or fix that line (it is attacked again), or rerun with --overwrite"


@pytest.mark.parametrize("rows,expected", RESULT_ROW_CASES)
def test_every_result_row_index_is_checked_on_resume(capsys, tmp_path, tiny_bert_dir, rows, expected):
    data = write(tmp_path / "dev.tsv", "sentence\tlabel\nthe film was good\t1\nthe plot was bad\t0\n")
    results = write(tmp_path / "out" / "attack" / "deepwordbug" / "results.jsonl",
                    "".join(json.dumps(r) + "\n" for r in rows))
    before = results.read_text()
    line = one_line(capsys, _attack(tiny_bert_dir, data, tmp_path / "out", "--resume"))
    assert line == f"advrobust attack: error: {results}: {expected}; {UNTOUCHED}"
    assert results.read_text() == before


def test_a_merged_shard_row_with_a_string_index_is_named(capsys, tmp_path):
    shard = tmp_path / "run" / "attack" / "pwws" / "shards" / "0-of-1"
    write(shard / "summary.json", json.dumps({"assets": []}))
    write(shard / "run.json", json.dumps({"shard": [0, 1], "selection_size": 2}))
    results = write(shard / "results.jsonl", json.dumps(ROW) + "\n" + json.dumps(ROW | {"index": "1"}) + "\n")
    assert one_line(capsys, ["merge", tmp_path / "run"]) == (
        f"advrobust merge: error: {results}: line 2: index '1' is not an example number (0, 1, 2, ...); "
        + UNTOUCHED.replace("rerun with --overwrite", f"move {results} away to start it again"))


# --- settings that leave nothing -------------------------------------------------------------------------
def test_an_eval_fraction_that_holds_out_every_text(capsys, tmp_path, tiny_bert_dir):
    corpus = write(tmp_path / "c.txt", "the film was good\nthe plot was bad\nit was fine\n")
    cfg = _pretrain_cfg(tmp_path, tiny_bert_dir, corpus, eval_fraction=0.9)
    assert one_line(capsys, ["pretrain", cfg]) == (
        f"advrobust pretrain: error: {corpus}: pretrain.eval_fraction = 0.9 of 3 texts holds out 3 and leaves "
        f"none to train on; lower pretrain.eval_fraction or give a larger corpus")


# --- files of the wrong kind ------------------------------------------------------------------------------
def test_a_results_file_that_is_a_directory(capsys, tmp_path, tiny_bert_dir):
    data = write(tmp_path / "dev.tsv", "sentence\tlabel\nthe film was good\t1\nthe plot was bad\t0\n")
    results = tmp_path / "out" / "attack" / "deepwordbug" / "results.jsonl"
    results.mkdir(parents=True)
    assert one_line(capsys, _attack(tiny_bert_dir, data, tmp_path / "out", "--resume")) == (
        f"advrobust attack: error: {results}: is a directory, not a results file; move it away (or rerun with "
        f"--overwrite)")
    assert results.is_dir()


def test_a_truncated_checkpoint_is_refused_on_resume(capsys, run_config, tmp_path):
    cfg = run_config(train="max_steps = 2\ncheckpoint_every_steps = 1")
    assert main(["train", str(cfg), "--set", "train.max_steps=1", "--no-progress"]) == 0
    capsys.readouterr()
    shutil.rmtree(tmp_path / "run")
    from asa_plugin.training import checkpoint

    real = checkpoint.save

    def save_then_stop(accelerator, run_dir, state):
        real(accelerator, run_dir, state)
        raise KeyboardInterrupt

    import asa_plugin.training.loop as loop

    loop.checkpoint.save = save_then_stop
    try:
        assert main(["train", str(cfg), "--no-progress"]) == 130
    finally:
        loop.checkpoint.save = real
    capsys.readouterr()
    weights = tmp_path / "run" / "checkpoint" / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    line = one_line(capsys, ["train", cfg, "--resume", "--no-progress"])
    assert line.startswith(f"advrobust train: error: checkpoint file {weights} is truncated or damaged (")
    assert line.endswith("); this checkpoint cannot be resumed: restore it, or train into another directory with "
                         "--set output.run_dir=...")


def test_an_incomplete_wordnet_is_named(capsys, tmp_path, tiny_bert_dir):
    wordnet = tmp_path / "nltk" / "corpora" / "wordnet"
    shutil.copytree(Path(__import__("os").environ["NLTK_DATA"]) / "corpora" / "wordnet", wordnet)
    (wordnet / "lexnames").unlink()
    data = write(tmp_path / "dev.tsv", "sentence\tlabel\nthe film was good\t1\nthe plot was bad\t0\n")
    argv = ["attack", "--model", tiny_bert_dir, "--recipe", "pwws", "--data-file", data, "--out", tmp_path / "out",
            "--set", f"attack.nltk_data={tmp_path / 'nltk'}", "--no-progress"]
    assert one_line(capsys, argv) == (
        f"advrobust attack: error: WordNet in {wordnet} is incomplete (no lexnames); install it again (python -m "
        f"nltk.downloader wordnet), or point attack.nltk_data (or NLTK_DATA) at a whole copy")


def test_asa_maps_into_an_unwritable_place(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    blocker = write(tmp_path / "blocker", "a file")
    assert one_line(capsys, ["asa-maps", run, "--text", "good film", "--out", blocker / "maps.png"]) == (
        f"advrobust asa-maps: error: asa-maps --out {blocker}: {blocker} is a file, not a directory; "
        f"choose another with --out FILE.png")


WRITE_FAILURES = [
    # (exception, command, whether a checkpoint was written, the line after "error: ")
    (OSError(30, "Read-only file system", "b/x"), "bench", None,
     "cannot write b/x: Read-only file system; choose an output directory you can write (or make this one "
     "writable), then rerun the same command (finished cells are kept)"),
    (OSError(13, "Permission denied", "run/model"), "train", True,
     "cannot write run/model: Permission denied; choose an output directory you can write (or make this one "
     "writable), then rerun the same command with --resume (the last checkpoint is kept)"),
    (OSError(28, "No space left on device", "run/checkpoint.tmp"), "train", False,
     "cannot write run/checkpoint.tmp: No space left on device; free space (or choose another output directory), "
     "then rerun the same command (no checkpoint had been written, so it starts over)"),
    (OSError(21, "Is a directory", "run/model/README.md"), "train", True,
     "cannot write run/model/README.md: it (or a folder on its path) is a directory, which this command writes "
     "as a file; move it away, then rerun the same command with --resume (the last checkpoint is kept)"),
]


@pytest.mark.parametrize("exc,command,saved,expected", WRITE_FAILURES)
def test_write_failures_name_the_file_and_a_fix_that_helps(exc, command, saved, expected):
    from asa_plugin import interrupts
    from asa_plugin.errors import write_failure

    interrupts.reset()
    if saved is not None:
        interrupts.record(saved, "")
    assert write_failure(exc, command) == expected


def test_a_failed_safetensors_write_names_the_folder(capsys, monkeypatch, run_config, tmp_path):
    """safetensors' own ENOSPC error names no file: the line names the folder being written."""
    import accelerate.utils.other

    def full(*args, **kwargs):
        raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                           'left on device" })')

    monkeypatch.setattr(accelerate.utils.other, "safe_save_file", full)
    cfg = run_config(train="max_steps = 2\ncheckpoint_every_steps = 1")
    assert main(["train", str(cfg), "--no-progress"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"advrobust train: error: cannot write {tmp_path / 'run' / 'checkpoint.tmp'}: No space left "
                    f"on device; free space (or choose another output directory), then rerun the same command (no "
                    f"checkpoint had been written, so it starts over)")


def test_sigterm_before_the_first_checkpoint_does_not_offer_resume(capsys, monkeypatch, run_config, tmp_path):
    import asa_plugin.training.loop as loop

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # as SIGTERM does (interrupts.sigterm_as_interrupt)

    monkeypatch.setattr(loop.Task, "load_data", stop)
    assert main(["train", str(run_config()), "--no-progress"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"advrobust train: interrupted; no checkpoint written yet in {tmp_path / 'run'}; nothing to resume yet, a "
        f"rerun starts this part over")


# --- resume that does not resume ------------------------------------------------------------------------
def test_resume_on_a_directory_that_does_not_exist(capsys, run_config, tmp_path):
    assert one_line(capsys, ["train", run_config(), "--resume"]) == (
        f"advrobust train: error: --resume: {tmp_path / 'run'} does not exist, so there is nothing to resume (a "
        f"mistyped output.run_dir?); give the run's directory, or drop --resume to start it")
    assert not (tmp_path / "run").exists()


def _stopped_run(capsys, monkeypatch, cfg: Path, command: str = "train") -> None:
    """Run ``cfg`` until its first checkpoint is written, then stop it as SIGTERM would."""
    from asa_plugin.training import checkpoint

    real = checkpoint.save

    def save_then_stop(accelerator, run_dir, state):
        real(accelerator, run_dir, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    assert main([command, str(cfg), "--no-progress"]) == 130
    monkeypatch.setattr(checkpoint, "save", real)
    capsys.readouterr()


def test_resume_without_trainer_state_is_refused(capsys, monkeypatch, run_config, tmp_path):
    cfg = run_config(train="max_steps = 3\ncheckpoint_every_steps = 1")
    _stopped_run(capsys, monkeypatch, cfg)
    (tmp_path / "run" / "checkpoint" / "trainer_state.json").unlink()
    assert one_line(capsys, ["train", cfg, "--resume"]) == (
        f"advrobust train: error: --resume: {tmp_path / 'run' / 'checkpoint'} has no trainer_state.json, so its "
        f"step is unknown and resuming would restart at step 0; restore the file, or train into another directory "
        f"with --set output.run_dir=...")


def test_a_corpus_edited_since_the_kill_is_refused(capsys, monkeypatch, tmp_path, tiny_bert_dir):
    corpus = write_corpus(tmp_path / "corpus.txt", n=40)
    cfg = _pretrain_cfg(tmp_path, tiny_bert_dir, corpus)
    _stopped_run(capsys, monkeypatch, cfg, "pretrain")
    write_corpus(corpus, n=40, seed=1)
    line = one_line(capsys, ["pretrain", cfg, "--resume"])
    assert line.startswith(f"advrobust pretrain: error: --resume: the corpus {corpus} changed since "
                           f"{tmp_path / 'run'} was started (sha256 ")
    assert line.endswith("the resumed run would train on other texts than the interrupted one; restore the data, "
                         "or train into another directory with --set output.run_dir=...")


def test_training_data_edited_since_the_kill_is_refused(capsys, monkeypatch, run_config, tmp_path):
    train = write(tmp_path / "train.tsv", "sentence\tlabel\n" + "".join(f"good film {i}\t{i % 2}\n" for i in range(40)))
    cfg = run_config(train="max_steps = 3\ncheckpoint_every_steps = 1", extra={"data": {"train_file": str(train)}})
    _stopped_run(capsys, monkeypatch, cfg)
    write(train, train.read_text().replace("good film 7", "bad film 7"))
    assert one_line(capsys, ["train", cfg, "--resume"]).startswith(
        "advrobust train: error: --resume: the training data (data.*) changed since")


def test_a_truncated_exported_model_does_not_pass_resume(capsys, run_config, tmp_path):
    cfg = run_config(train="max_steps = 1")
    assert main(["train", str(cfg), "--no-progress"]) == 0
    capsys.readouterr()
    weights = tmp_path / "run" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    line = one_line(capsys, ["train", cfg, "--resume"])
    assert line.startswith(f"advrobust train: error: --resume: {tmp_path / 'run'} finished, but its model is "
                           f"damaged: {weights} is truncated or damaged (")
    assert line.endswith("restore it from a copy, or train again into another directory with "
                         "--set output.run_dir=...")


@pytest.mark.parametrize("was,given", [("pretrain", "train"), ("train", "pretrain")])
def test_a_run_of_the_other_command_says_what_it_is(capsys, run_config, tmp_path, tiny_bert_dir, was, given):
    corpus = write_corpus(tmp_path / "corpus.txt", n=20)
    configs = {"train": run_config(), "pretrain": _pretrain_cfg(tmp_path, tiny_bert_dir, corpus)}
    resolved = {"pretrain": {"pretrain": {"corpus": str(corpus)}}, "train": {"data": {"dataset": "sst2"}}}[was]
    write(tmp_path / "run" / "config.resolved.toml", tomli_w.dumps(resolved))
    kinds = {"pretrain": "a pre-training run (`advrobust pretrain`)", "train": "a training run (`advrobust train`)"}
    assert one_line(capsys, [given, configs[given], "--resume"]) == (
        f"advrobust {given}: error: {tmp_path / 'run'} holds {kinds[was]}, not {kinds[given].split(' (')[0]}: "
        f"continue it with `advrobust {was} CONFIG --resume`, or choose another directory with "
        f"--set output.run_dir=...")


# --- names used as paths stay inside their directory ------------------------------------------------------
def _sst2_run(root: Path, tiny: Path, max_length: int = 32) -> Path:
    shutil.copytree(tiny, root / "run" / "model")
    write(root / "run" / "config.resolved.toml", f"[data]\ndataset = \"sst2\"\n[model]\nmax_length = {max_length}\n")
    return root / "run"


@pytest.mark.parametrize("name,problem", [("../../x", "it holds a path separator"),
                                          ("..", "'..' is the directory itself or its parent"),
                                          ("", "it is empty")])
def test_evaluate_name_cannot_leave_the_run(capsys, tmp_path, tiny_bert_dir, toy_data, name, problem):
    run = _sst2_run(tmp_path, tiny_bert_dir)
    assert one_line(capsys, ["evaluate", run, "--data-file", toy_data["dev"], "--name", name]) == (
        f"advrobust evaluate: error: --name {name!r} cannot name a folder under {run / 'evaluate'} ({problem}); "
        f"give a plain name such as 'advglue-sst2' (--out DIR chooses where)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def _bench_cfg(tmp_path: Path, tiny: Path, toy_data, bench: str) -> Path:
    return write(tmp_path / "bench.toml", f"""[bench]
recipes = ["deepwordbug"]
out_dir = "{tmp_path / 'bench'}"
{bench}
[model]
backbone = "{tiny}"
num_labels = 2
[data]
train_file = "{toy_data['train']}"
dev_file = "{toy_data['dev']}"
[train]
max_steps = 1
""")


BENCH_NAME_CASES = [
    ('defences = ["vanilla", "."]\n[bench.variants."."]\ndefence = "asa"\n',
     "bench.defences: '.' cannot name a run directory under runs/ ('.' is the directory itself or its parent); "
     "use a plain name such as \"asa-tau0.3\""),
    ('defences = ["vanilla", ".."]\n[bench.variants.".."]\ndefence = "asa"\n',
     "bench.defences: '..' cannot name a run directory under runs/ ('..' is the directory itself or its parent); "
     "use a plain name such as \"asa-tau0.3\""),
    ('defences = ["vanilla", "../asa"]\n',
     "bench.defences: '../asa' cannot name a run directory under runs/ (it holds a path separator); use a plain name "
     "such as \"asa-tau0.3\""),
    ('defences = ["asa+freelb", "freelb+asa"]\n',
     "bench.defences lists 'asa+freelb' and 'freelb+asa': one composition (the objective defence runs inside the "
     "perturbation defence's passes whatever the order), which would train twice; keep one"),
]


@pytest.mark.parametrize("bench,expected", BENCH_NAME_CASES)
def test_bench_labels_name_one_run_directory_each(capsys, tmp_path, tiny_bert_dir, toy_data, bench, expected):
    cfg = _bench_cfg(tmp_path, tiny_bert_dir, toy_data, bench)
    line = one_line(capsys, ["bench", cfg])
    assert line.startswith("advrobust bench: error: ") and line.endswith(expected), line
    assert not (tmp_path / "bench").exists()


# --- options that silently do nothing --------------------------------------------------------------------
def test_task_on_a_file_of_one_set_is_refused(capsys, tmp_path, tiny_bert_dir, toy_data):
    run = _sst2_run(tmp_path, tiny_bert_dir)
    assert one_line(capsys, ["evaluate", run, "--data-file", toy_data["dev"], "--task", "qqp"]) == (
        f"advrobust evaluate: error: {toy_data['dev']}: a task ('qqp') picks one list of a per-task .json file "
        f"(AdvGLUE's layout), but this is a .tsv file of one set; drop --task")
    assert not (run / "evaluate").exists()


def test_a_variant_defined_but_not_listed_is_said(capsys, tmp_path, tiny_bert_dir, toy_data):
    from asa_plugin.bench.plan import load_plan

    cfg = _bench_cfg(tmp_path, tiny_bert_dir, toy_data,
                     'defences = ["vanilla"]\n[bench.variants."asa-tau0.3"]\ndefence = "asa"\nasa = {tau = 0.3}\n')
    load_plan(cfg)
    assert capsys.readouterr().err.strip() == (
        f"advrobust bench: warning: {cfg}: bench.variants.asa-tau0.3 is defined but not listed in bench.defences, "
        f"so no cell trains it; add \"asa-tau0.3\" to bench.defences (--only-defences runs a part of the grid), or "
        f"remove the variant")


# --- data that is wrong but would train --------------------------------------------------------------------
def _tsv(rows: list[tuple], header: str = "sentence\tlabel") -> str:
    return header + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows)


GOOD = [(f"good film {i}", i % 2) for i in range(6)]
DATA_CASES = [
    # (file name, its text, extra [data]/[model] settings, the message after "advrobust train: error: ")
    ("train.tsv", _tsv([(t, "other " + t, y) for t, y in GOOD], "sentence\tsentence\tlabel"), {},
     "{f}: line 1: the header names column 'sentence' 2 times; give each column its own name"),
    ("train.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "text": "c", "label": 1}\n', {},
     "{f}: line 2: key 'text' appears twice in the object; keep one (JSON keeps only the last)"),
    ("train.jsonl", '{"text": "a", "label": 0}\n{"text": null, "label": 1}\n', {},
     "{f}: row 2: text is null (no text); give it a text or remove the row"),
    ("train.jsonl", '{"text": "a", "label": 0}\n{"text": ["b", "c"], "label": 1}\n', {},
     "{f}: row 2: text is a list, not a text; every text must be a string"),
    ("train.tsv", _tsv(GOOD + [("  ", 1)]), {},
     "{f}: row 7: sentence is empty; a training example needs a text: give it one or remove the row"),
    ("train.tsv", _tsv([("good", "pos"), ("bad", "neg")]), {"data": {"label_names": ["neg", ""]}},
     "data.label_names: name 2 of 2 is empty (['neg', '']); a class needs a name a row can have: fix or remove it"),
    ("train.tsv", _tsv(GOOD), {"model": {"num_labels": 5}},
     "{f}: model.num_labels = 5, but no training row has label LABEL_2, LABEL_3, LABEL_4 (the labels are 0, 1): "
     "the model could never predict them; set model.num_labels = 2 (or remove it), or add such examples"),
    ("train.tsv", "sentence,label\n" + "".join(f"good film {i},{i % 2}\n" for i in range(6)), {},
     "{f}: no text column 'text/sentence/review/content'; columns are sentence,label; set data.text_column (its "
     "header line is split by commas, not tabs: a .csv file named .tsv? rename it train.csv)"),
]


@pytest.mark.parametrize("name,text,extra,expected", DATA_CASES)
def test_data_that_is_wrong_is_refused_before_training(capsys, run_config, tmp_path, name, text, extra, expected):
    data = write(tmp_path / name, text)
    sections = {"data": {"train_file": str(data), "dev_file": str(data)}}
    for section, values in extra.items():
        sections.setdefault(section, {}).update(values)
    cfg = run_config(extra=sections)
    assert one_line(capsys, ["train", cfg]) == "advrobust train: error: " + fill(expected, f=data)
    assert not (tmp_path / "run" / "model").exists()


def test_a_model_of_many_classes_on_two_class_data_warns(capsys, tmp_path, toy_data):
    from tiny import tiny_model_dir

    model = tiny_model_dir(tmp_path / "ten", "bert", num_labels=10)
    assert main(["evaluate", str(model), "--data-file", str(toy_data["dev"]), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err.strip() == (
        f"advrobust evaluate: warning: the model has 10 classes, but the labels of {toy_data['dev']} use only 2 of "
        f"them (LABEL_0, LABEL_1): a model of another task? its accuracy on this data means little")


# --- counts that are off ---------------------------------------------------------------------------------
def test_an_empty_shard_is_refused(capsys, tmp_path, tiny_bert_dir):
    data = write(tmp_path / "dev.tsv", "sentence\tlabel\nthe film was good\t1\nthe plot was bad\t0\n")
    assert one_line(capsys, _attack(tiny_bert_dir, data, tmp_path / "out", "--shard", "3/4")) == (
        "advrobust attack: error: --shard 3/4: shard 3 of 4 holds no example (there are 2); use at most 2 shards, "
        "e.g. --shard 0/2")
    assert not (tmp_path / "out" / "attack").exists()


# --- an attack of a run uses the run's settings -----------------------------------------------------------
def test_attack_of_a_run_uses_its_max_length(capsys, tmp_path, tiny_bert_dir):
    from asa_plugin.cli import build_parser
    from asa_plugin.commands.attack import build_jobs

    run = _sst2_run(tmp_path, tiny_bert_dir, max_length=16)
    data = write(tmp_path / "dev.tsv", "sentence\tlabel\nthe film was good\t1\nthe plot was bad\t0\n")
    for extra, expected in (([], 16), (["--set", "model.max_length=24"], 24)):
        args = build_parser().parse_args([str(a) for a in _attack(run, data, tmp_path / "o", *extra)])
        cfg, (job,) = build_jobs(args)
        assert (cfg.model.max_length, job.max_length) == (expected, expected)


def test_a_dev_file_is_named_as_the_file_not_the_dataset(tmp_path, tiny_bert_dir, toy_data):
    from asa_plugin.attacks.jobs import data_source

    from asa_plugin.config import DataConfig

    data = DataConfig(dataset="sst2", dev_file=str(toy_data["dev"]))
    assert data_source(data, "dev") == f"{toy_data['dev']}:dev"
    assert data_source(DataConfig(dataset="sst2"), "dev") == "sst2:dev"


# --- every fix names a flag or key the command has -----------------------------------------------------------
def test_evaluate_does_not_suggest_config_keys(capsys, tmp_path, tiny_bert_dir):
    run = _sst2_run(tmp_path, tiny_bert_dir)
    data = write(tmp_path / "dev.tsv", "words\tlabel\ngood\t1\n")
    assert one_line(capsys, ["evaluate", run, "--data-file", data]) == (
        f"advrobust evaluate: error: {data}: no text column 'text/sentence/review/content'; columns are words, "
        f"label; name the file's text column text, sentence, review or content")


def test_pretrain_names_its_own_text_column_key(capsys, tmp_path, tiny_bert_dir):
    corpus = write(tmp_path / "c.tsv", "words\tx\ngood film\t1\n")
    assert one_line(capsys, ["pretrain", _pretrain_cfg(tmp_path, tiny_bert_dir, corpus)]) == (
        f"advrobust pretrain: error: {corpus}: no text column 'text/sentence/review/content'; columns are words, x; "
        f"set pretrain.text_column")


SET_CASES = [
    # (command, override, the line after "error: "): a bad --set value is blamed on the --set
    ("train", "data.train_file=nope.tsv", "--set 'data.train_file=nope.tsv': data.train_file: file not found: "
                                            "nope.tsv"),
    ("train", "model.backbone=./nope", "--set 'model.backbone=./nope': model.backbone ./nope: directory not found"),
    ("pretrain", "pretrain.corpus=nope.txt", "--set 'pretrain.corpus=nope.txt': pretrain.corpus: file not found: "
                                               "nope.txt"),
]


@pytest.mark.parametrize("command,override,expected", SET_CASES)
def test_set_mistakes_are_blamed_on_the_set(capsys, run_config, tmp_path, tiny_bert_dir, command, override, expected):
    corpus = write_corpus(tmp_path / "c.txt")
    cfg = run_config() if command == "train" else _pretrain_cfg(tmp_path, tiny_bert_dir, corpus)
    assert one_line(capsys, [command, cfg, "--set", override]) == f"advrobust {command}: error: {expected}"


# --- noise ------------------------------------------------------------------------------------------------
def test_pretraining_checkpoints_do_not_warn_about_tied_weights(capsys, caplog, tmp_path, tiny_bert_dir):
    corpus = write_corpus(tmp_path / "corpus.txt", n=40)
    assert main(["pretrain", str(_pretrain_cfg(tmp_path, tiny_bert_dir, corpus)), "--no-progress"]) == 0
    said = capsys.readouterr().err + caplog.text
    assert "Removed shared tensor" not in said


# --- shards and bench reruns --------------------------------------------------------------------------------
def test_shards_of_other_settings_name_the_key(capsys, tmp_path):
    recipe = tmp_path / "run" / "attack" / "pwws"
    for i, model in enumerate(["runs/a/model", "runs/b/model"]):
        shard = recipe / "shards" / f"{i}-of-2"
        write(shard / "summary.json", json.dumps({"assets": []}))
        write(shard / "run.json", json.dumps({"shard": [i, 2], "selection_size": 2, "model": model, "seed": 1}))
        write(shard / "results.jsonl", json.dumps(ROW | {"index": i}) + "\n")
    assert one_line(capsys, ["merge", tmp_path / "run"]) == (
        f"advrobust merge: error: {recipe}: shard 1/2 was run with other settings than shard 0 (model 'runs/a/model' "
        f"vs 'runs/b/model'); rerun it with shard 0's settings (or all shards alike) and merge again")


def test_a_bench_run_that_lost_its_resolved_config_keeps_the_report(capsys, tmp_path, tiny_bert_dir):
    from asa_plugin.modelcard import write_bench_cards

    run = tmp_path / "bench" / "runs" / "vanilla"
    shutil.copytree(tiny_bert_dir, run / "model")
    write(run / "metrics.json", json.dumps({"defence": "vanilla", "eval_accuracy": 0.5}))
    report = {"training": [{"run": "vanilla", "defence": "vanilla", "status": "done"}], "cells": []}
    assert write_bench_cards(tmp_path / "bench", report) == []
    assert capsys.readouterr().err.strip() == (
        f"advrobust bench: warning: {run} has no config.resolved.toml, so its model card was not updated; restore "
        f"the file (or retrain: move {run} away and rerun the bench)")


def test_a_readme_that_is_a_directory_is_one_line(capsys, run_config, tmp_path):
    (tmp_path / "run" / "model" / "README.md").mkdir(parents=True)
    assert main(["train", str(run_config(train="max_steps = 1")), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"advrobust train: error: cannot write {tmp_path / 'run' / 'model' / 'README.md'}: it (or a folder on its "
        f"path) is a directory, which this command writes as a file; move it away, then rerun the same command "
        f"with --resume (the last checkpoint is kept)")


# --- asa-maps says what it draws and where ---------------------------------------------------------------
def test_asa_maps_says_when_it_cuts_and_prints_the_file_it_wrote(capsys, tmp_path, tiny_bert_dir, toy_data):
    import tomli_w as tw

    cfg = write(tmp_path / "asa.toml", tw.dumps({
        "model": {"backbone": str(tiny_bert_dir), "num_labels": 2, "max_length": 8},
        "data": {"train_file": str(toy_data["train"]), "dev_file": str(toy_data["dev"])},
        "defence": {"name": "asa"}, "train": {"max_steps": 1, "batch_size": 8},
        "output": {"run_dir": str(tmp_path / "run")}}))
    assert main(["train", str(cfg), "--no-progress"]) == 0
    capsys.readouterr()
    text = "the film was good and the plot was fine but the acting was bad"
    assert main(["asa-maps", str(tmp_path / "run"), "--text", text, "--out", str(tmp_path / "maps")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "maps.png") and (tmp_path / "maps.png").is_file()
    assert err.strip() == ("advrobust asa-maps: note: --text has 16 tokens; the run's model.max_length is 8, so the "
                           "maps show its first 8 (what the model sees)")
