"""``train --resume`` continues only the run it was started as: every ``[defence]`` setting counts
(a composed defence's per-defence tables too), and a checkpoint or record that lacks what the run
was saved with is refused before anything loads, instead of silently diverging."""

from __future__ import annotations

import types

import pytest

from asa_plugin.cli import main
from asa_plugin.hookspecs import hookimpl


def one_line(capsys, argv: list, code: int = 2) -> str:
    """Run ``advrobust ARGV``; assert exit ``code`` and exactly one message line; return it."""
    assert main([str(a) for a in argv]) == code
    err = capsys.readouterr().err.replace("\r", "\n")
    lines = [line for line in err.splitlines() if line.startswith(("advrobust ", "Traceback"))]
    assert len(lines) == 1, lines
    return lines[0]


# (the run's [defence], the resume's --set, the changes the refusal names)
DEFENCE_CHANGES = [
    ('name = "asa"', ["defence.tau=0.3"], "defence.tau (0.5 -> 0.3)"),
    ('name = "asa"\ntau = 0.7', ["defence.tau=0.5"], "defence.tau (0.7 -> 0.5)"),
    ('name = "asa"', ['defence.name="vanilla"'], "defence.name ('asa' -> 'vanilla'), defence.adversarial_ce "
                                                     "(False -> None)"),
    ('name = "pgd"', ["defence.epsilon=0.2", 'defence.norm="linf"'],
     "defence.epsilon (0.1 -> 0.2), defence.norm ('l2' -> 'linf')"),
    ('name = "fgm"', ['defence.name="pgd"'], "defence.name ('fgm' -> 'pgd')"),
    ('name = ["asa", "freelb"]', ["defence.freelb.init_mag=0.0"], "defence.freelb.init_mag (0.05 -> 0.0)"),
    ('name = ["asa", "freelb"]', ["defence.asa.tau=0.3", "defence.freelb.adv_steps=2"],
     "defence.asa.tau (0.5 -> 0.3), defence.freelb.adv_steps (5 -> 2)"),
]


@pytest.mark.parametrize("defence, changed, named", DEFENCE_CHANGES)
def test_resume_refuses_a_change_of_any_defence_setting(capsys, tmp_path, run_config, defence, changed, named):
    cfg = run_config(defence, "max_steps = 1")
    assert main(["train", str(cfg)]) == 0
    capsys.readouterr()
    sets = [a for c in changed for a in ("--set", c)]
    line = one_line(capsys, ["train", cfg, "--resume", *sets])
    assert line.startswith(f"advrobust train: error: --resume: {tmp_path / 'run'} was finished with other "
                           f"settings: {named}"), line


@pytest.mark.parametrize("defence, changed", [('name = "asa"', "defence.recompute_clean=false"),
                                               ('name = ["asa", "freelb"]', "defence.asa.recompute_clean=false")])
def test_resume_accepts_a_change_of_how_not_what_is_computed(capsys, tmp_path, run_config, defence, changed):
    """ASA's recompute_clean gives the same gradients bit for bit (test_asa_defence.py): not a new run."""
    cfg = run_config(defence, "max_steps = 1")
    assert main(["train", str(cfg)]) == 0
    assert main(["train", str(cfg), "--resume", "--set", changed]) == 0
    assert "other settings" not in capsys.readouterr().err


@pytest.fixture
def interrupted_run(tmp_path, run_config, monkeypatch, capsys):
    """A run stopped by Ctrl-C after its first epoch, with a checkpoint at step 6; its config."""
    import asa_plugin.training.loop as loop
    from asa_plugin.plugins import PluginManager

    def on_epoch_end(run_dir, epoch, metrics):
        raise KeyboardInterrupt

    plugin = types.ModuleType("ctrl_c")
    plugin.advrobust_on_epoch_end = hookimpl(on_epoch_end)
    with monkeypatch.context() as patch:
        patch.setattr(loop, "get_plugin_manager", lambda **kw: PluginManager(load_external=False,
                                                                             extra_plugins=[plugin]))
        cfg = run_config(train="checkpoint_every_steps = 2")
        assert main(["train", str(cfg)]) == 130
    capsys.readouterr()
    assert (tmp_path / "run" / "checkpoint" / "random_states_0.pkl").is_file()
    return cfg


# (what is deleted from the run directory, what the one line says about it)
INCOMPLETE = [
    ("config.resolved.toml", "config.resolved.toml is missing, so the settings {run} was started with are unknown"),
    ("checkpoint/random_states_0.pkl", "{run}/checkpoint is incomplete (missing random_states_0.pkl)"),
    ("checkpoint/optimizer.bin", "{run}/checkpoint is incomplete (missing optimizer.bin)"),
    ("checkpoint/model.safetensors", "{run}/checkpoint is incomplete (missing model.safetensors)"),
]


@pytest.mark.parametrize("deleted, says", INCOMPLETE)
def test_resume_refuses_a_run_that_lost_a_file_before_loading_anything(capsys, tmp_path, interrupted_run,
                                                                       deleted, says):
    run = tmp_path / "run"
    (run / deleted).unlink()
    line = one_line(capsys, ["train", interrupted_run, "--resume"])
    assert says.replace("{run}", str(run)) in line, line
    assert not (run / "metrics.json").exists()


def test_the_complete_checkpoint_resumes(capsys, tmp_path, interrupted_run):
    assert main(["train", str(interrupted_run), "--resume"]) == 0
    assert (tmp_path / "run" / "metrics.json").is_file()
