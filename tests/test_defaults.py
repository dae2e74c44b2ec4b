"""Issue 10: defaults that follow the authors' code, metrics that survive --resume, and the
degenerate-model flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from asa_plugin.adapters.loading import load_adapter

from asa_plugin import degenerate
from asa_plugin.commands.attack import degenerate_warning
from asa_plugin.config import load_config
from asa_plugin.defences.asa import ASADefence, ASAParams
from asa_plugin.defences.contrastive import TEMPLATES, ContrastiveOptions
from asa_plugin.defences.fgm import FGMParams
from asa_plugin.defences.pgd import PGDParams
from asa_plugin.defences.scal import SCALParams
from asa_plugin.defences.uscal import USCALParams
from asa_plugin.errors import ConfigError
from asa_plugin.training.loop import _optimizer


# --- ASA at the official code's settings --------------------------------------------------------
def test_asa_defaults_are_the_official_settings():
    params = ASAParams()
    assert params.adversary_lr is None  # = train.lr, in the model's optimizer
    assert params.divergence_weight == 0.5  # 1/2 (KL(p||q) + KL(q||p)), modeling/utils.py divergence()
    assert params.tau == 0.5 and params.layers == "all" and params.gumbel_noise is False


def test_adversaries_get_the_models_initialisation(tiny_bert_dir):
    adapter = load_adapter(str(tiny_bert_dir), 2)
    torch.manual_seed(0)
    defence = ASADefence(ASAParams(), adapter)
    std = adapter.config.initializer_range
    for name, p in defence.adversary.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        else:
            assert p.std().item() == pytest.approx(std, rel=0.2), name  # not nn.Linear's kaiming-uniform
            assert p.mean().abs().item() < std / 4, name


@pytest.mark.parametrize("adversary_lr, expected_lr", [(None, 3e-5), (1e-2, 1e-2)])
def test_adversaries_join_the_models_adamw_with_its_weight_decay_rule(tiny_bert_dir, adversary_lr, expected_lr):
    adapter = load_adapter(str(tiny_bert_dir), 2)
    defence = ASADefence(ASAParams(adversary_lr=adversary_lr), adapter)
    cfg = load_config(data={"train": {"lr": 3e-5, "weight_decay": 0.01}}).train
    optimizer = _optimizer(adapter.model, defence, cfg)
    assert isinstance(optimizer, torch.optim.AdamW)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for name, p in defence.adversary.named_parameters():
        group = group_of[id(p)]
        assert group["lr"] == expected_lr, name
        assert group["weight_decay"] == (0.0 if name.endswith("bias") else 0.01), name
    model_params = {id(p) for p in adapter.model.parameters()}
    assert all(group_of[i]["lr"] == 3e-5 for i in model_params)


# --- ASA's counters: logged per step window, saved with checkpoints ------------------------------
def test_mask_ratios_are_logged_every_log_every_steps(run_config):
    cfg = load_config(run_config(defence='name = "asa"', train="epochs = 1\nmax_steps = 4\nlog_every_steps = 2"))
    from asa_plugin.training.loop import train

    metrics = train(cfg)
    steps = metrics["step_history"]
    assert [s["step"] for s in steps] == [2, 4]
    for entry in steps:
        ratios = entry["asa_mask_ratio_per_layer"]
        assert len(ratios) == 2 and all(0.0 <= r <= 1.0 for r in ratios)
    log = (cfg.run_dir() / "train.log").read_text()
    assert log.count("asa_mask_ratio_per_layer") >= 3  # two step lines and the epoch line


def test_mask_counts_round_trip_through_the_checkpoint_state(tiny_bert_dir):
    adapter = load_adapter(str(tiny_bert_dir), 2)
    trained = ASADefence(ASAParams(), adapter)
    batch = dict(adapter.tokenizer(["good film", "a bad and boring film"], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0])
    trained.objective(batch, None)
    state = json.loads(json.dumps(trained.state_dict()))  # what the checkpoint's JSON holds
    restored = ASADefence(ASAParams(), adapter)
    restored.load_state_dict(state)
    assert restored.mask_ratio_per_layer() == trained.mask_ratio_per_layer()
    assert restored.mask_ratio_per_layer()[0] is not None


# The kill -9 resume of asa and asa+freelb, comparing every metric (mask ratios and step_history
# included) and the adversary's weights, is tests/test_training.py::test_resume_after_kill_minus_9...


# --- baselines: defaults that train ---------------------------------------------------------------
def test_perturbation_defaults_are_the_ones_measured_to_train():
    assert FGMParams().epsilon == 0.1
    pgd = PGDParams()
    assert (pgd.epsilon, pgd.step_size, pgd.adv_steps, pgd.init_mag, pgd.include_clean) == (0.1, 0.03, 3, 0.0, True)
    assert SCALParams().epsilon == 0.1 and USCALParams().epsilon == 0.1


def test_pgd_linf_step_larger_than_the_box_is_rejected():
    with pytest.raises(ValueError, match="step_size 0.3 is larger than defence.epsilon 0.01"):
        PGDParams(norm="linf", epsilon=0.01, step_size=0.3)
    PGDParams(norm="linf", epsilon=0.01, step_size=0.005)  # accepted
    PGDParams(norm="l2", epsilon=0.01, step_size=0.3)  # L2 steps are projected, not clipped per entry


def test_promptbert_templates_are_selectable_by_name():
    assert ContrastiveOptions(template="promptbert-trained").template == "promptbert-trained"
    assert TEMPLATES["promptbert-trained"] == 'This sentence of "[X]" means [MASK].'
    with pytest.raises(ValueError, match="neither a known name"):
        ContrastiveOptions(template="promptbert-v9")


def test_textdefender_pgd_is_a_documented_setting(run_config):
    cfg = load_config(run_config(defence='name = "pgd"\nadv_steps = 5\nstep_size = 0.03\ninit_mag = 0.05\n'
                                          'epsilon = 0.0\ninclude_clean = false'))
    params = cfg.defence.params["pgd"]
    assert (params.epsilon, params.include_clean, params.init_mag) == (0.0, False, 0.05)


# --- the degenerate flag ---------------------------------------------------------------------------
# Confusion matrices [gold][predicted] on SST-2 dev's class sizes (428 negative, 444 positive).
@pytest.mark.parametrize("matrix, fragment", [
    ([[0, 428], [0, 444]], "recognises class 0 in 0.0% of its 428 examples"),  # a constant classifier
    # one class 94 % of the time: accuracy 0.57 passed the former rule (>= 95 %, or majority + 2 points)
    ([[52, 376], [0, 444]], "recognises class 0 in 12.1% of its 428 examples, significantly below half of chance"),
    ([[240, 188], [230, 214]], "no dependence on the label (balanced accuracy 52.1%, chance 50.0%, p = 0.12"),
    # four classes (AG News sizes 1,900 each): one class 94 % of the time
    ([[1900, 0, 0, 0], [1700, 200, 0, 0], [1700, 0, 200, 0], [1750, 0, 0, 150]],
     "recognises class 1 in 10.5% of its 1900 examples, class 2 in 10.5% of its 1900 examples, class 3 in 7.9%"),
])
def test_a_model_that_ignores_its_input_is_flagged(matrix, fragment):
    verdict = degenerate.judge(matrix)
    assert verdict.degenerate is True and fragment in verdict.reason


@pytest.mark.parametrize("matrix", [
    [[368, 60], [49, 395]],  # the grid's ASA model (87.5 %)
    [[300, 128], [160, 284]],  # weak (67 %) but it separates the classes
    [[428 - 120, 120], [4, 440]],  # biased towards class 1 (64 % of predictions) yet recall 72 % on class 0
])
def test_a_model_that_separates_the_classes_is_not_flagged(matrix):
    verdict = degenerate.judge(matrix)
    assert verdict.degenerate is False and verdict.reason is None


def test_too_few_examples_are_undetermined_not_degenerate():
    verdict = degenerate.judge([[3, 0], [0, 2]])  # even a perfect classifier shows nothing on 5 examples
    assert verdict.degenerate is None and verdict.reason == "5 examples are too few to judge"


def test_recorded_counts_give_back_the_two_class_confusion_matrix():
    """Runs recorded before eval_confusion existed are judged again from counts and accuracy."""
    epoch = {"eval_accuracy": 0.875, "eval_predicted_counts": [417, 455], "eval_label_counts": [428, 444]}
    assert degenerate.epoch_confusion(epoch) == [[368, 60], [49, 395]]
    assert degenerate.reason({**epoch, "eval_accuracy": 494 / 872, "eval_predicted_counts": [52, 820]}) \
        .startswith("it recognises class 0 in 11.9%")


def test_stored_attack_rows_are_judged_from_gold_and_original_prediction():
    rows = [{"gold_label": g, "original_prediction": 1} for g in [0] * 20 + [1] * 20]
    verdict = degenerate.judge_rows(rows)
    assert verdict.degenerate is True and verdict.recalls == [0.0, 1.0]
    assert degenerate.judge_rows([]) is None


def constant_model_dir(tiny_bert_dir: Path, out: Path) -> Path:
    """The tiny model with a classifier bias that makes it predict class 0 for every input."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([50.0, -50.0]))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(out)
    return out


def test_training_flags_a_constant_model_and_warns(run_config, tiny_bert_dir, tmp_path, capsys):
    from asa_plugin.training.loop import train

    backbone = constant_model_dir(tiny_bert_dir, tmp_path / "constant")
    cfg = load_config(run_config(train="epochs = 1\nlr = 1e-9", backbone=backbone))
    metrics = train(cfg)
    assert metrics["eval_predicted_counts"] == [32, 0]
    assert metrics["eval_confusion"] == [[16, 0], [16, 0]]
    assert metrics["degenerate"] is True
    assert "recognises class 1 in 0.0% of its 16 examples" in metrics["degenerate_reason"]
    saved = json.loads((cfg.run_dir() / "metrics.json").read_text())
    assert saved["degenerate"] is True and saved["degenerate_reason"] == metrics["degenerate_reason"]
    assert "warning: the trained model is degenerate" in capsys.readouterr().err


def test_training_does_not_flag_a_model_that_learned(run_config):
    from asa_plugin.training.loop import train

    metrics = train(load_config(run_config(train="epochs = 10\nlr = 3e-3\nwarmup_ratio = 0.1")))
    assert metrics["eval_accuracy"] >= 0.75
    assert metrics["degenerate"] is False and metrics["degenerate_reason"] is None


def test_attack_warns_on_a_run_flagged_degenerate(tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    (run / "config.resolved.toml").write_text("")
    (run / "metrics.json").write_text(json.dumps({"degenerate": True,
                                                  "degenerate_reason": "it predicts class 1 for 100.0%"}))
    warning = degenerate_warning(str(run / "model"))
    assert warning is not None and "degenerate" in warning and "class 1 for 100.0%" in warning
    (run / "metrics.json").write_text(json.dumps({"degenerate": False}))
    assert degenerate_warning(str(run)) is None


def test_bad_config_names_the_linf_problem_in_one_line(run_config):
    with pytest.raises(ConfigError, match="step_size"):
        load_config(run_config(defence='name = "pgd"\nnorm = "linf"\nepsilon = 0.01\nstep_size = 0.3'))
