"""ASA composed with each procedure defence: in one step, through a config, and in the finished run.

The README's headline composition is ``name = ["asa", "freelb"]``: every pass of the procedure
defence runs ASA's objective (a clean and a masked forward), the adversary is trained and saved
beside a plain export, and ``asa-maps`` draws the trained masks.
"""

from __future__ import annotations

import json

import pytest
import torch
from asa_plugin.adapters.loading import load_adapter
from safetensors import safe_open
from tiny import tiny_model_dir

from asa_plugin.cli import main
from asa_plugin.config import load_config
from asa_plugin.defences.asa import ASAParams
from asa_plugin.defences.asa import functional as asa_f
from asa_plugin.defences.base import build_defence
from asa_plugin.plugins import get_plugin_manager

TEXTS = ["the movie was good and really fun", "bad boring plot", "i love it", "a very awful film"]
LABELS = [1, 0, 1, 0]

# (procedure defence, its explicit params, passes through the objective per step, as docs/baselines.md
#  describes them: fgm 2, pgd K + 1, freelb K, scal 2, uscal 1 (its other views only read representations),
#  freelb++ K, creat 1 + K, infobert K, tavat K)
PROCEDURES = [
    ("fgm", {"epsilon": 0.5}, 2),
    ("pgd", {"adv_steps": 2, "epsilon": 0.5, "step_size": 0.2}, 3),
    ("freelb", {"adv_steps": 3, "adv_lr": 0.1, "init_mag": 0.05, "max_norm": 0.0}, 3),
    ("scal", {"epsilon": 0.3}, 2),
    ("uscal", {"epsilon": 0.3}, 1),
    ("freelb++", {"adv_steps": 2, "adv_lr": 0.1, "init_mag": 0.05, "max_norm": 0.0}, 2),
    ("creat", {"adv_steps": 2, "adv_lr": 0.1, "max_norm": 0.1}, 3),  # clean, start, after one ascent step
    ("infobert", {"adv_steps": 2}, 2),
    ("tavat", {"adv_steps": 2}, 2),
]


def hooks_left(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("name,params,passes", PROCEDURES, ids=[p[0] for p in PROCEDURES])
def test_real_asa_runs_inside_every_pass_of_each_procedure_defence(tiny_bert_dir, name, params, passes):
    torch.manual_seed(0)
    adapter = load_adapter(str(tiny_bert_dir), 2)
    registry = get_plugin_manager().defences
    procedure = registry.get(name)
    composed = build_defence(["asa", name], {"asa": ASAParams(), name: procedure.Params(**params)}, adapter,
                             registry)
    asa = composed.parts[0]
    assert composed.name == f"asa+{name}"
    assert composed.trainable_modules() == [asa.adversary, *composed.parts[1].trainable_modules()]
    batch = dict(adapter.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor(LABELS)
    result = composed.training_step(batch, lambda loss: loss.backward())

    assert torch.isfinite(torch.tensor(result.loss))
    real_units = int(asa_f.pair_mask(batch["attention_mask"]).sum())
    for layer in asa.adversary.layers:  # one masked forward per objective pass, in every adversarial layer
        assert int(asa.epoch_counts.units[layer]) == passes * real_units, layer
    weights = [p for p in asa.adversary.parameters() if p.dim() == 2]
    assert weights and all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)
    assert all(0 < r < 1 for r in composed.epoch_metrics()["asa_mask_ratio_per_layer"])
    assert hooks_left(adapter.model) == 0


@pytest.mark.parametrize("name,params,passes", PROCEDURES, ids=[p[0] for p in PROCEDURES])
def test_a_composed_step_reports_the_models_loss_whatever_tau(tiny_bert_dir, name, params, passes):
    """tau^2 x kept units (thousands on real inputs) moves only the adversary: it is not in the loss logged."""
    adapter = load_adapter(str(tiny_bert_dir), 2)
    adapter.model.eval()  # no dropout: the two steps compute the same passes
    registry = get_plugin_manager().defences
    batch = dict(adapter.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor(LABELS)
    losses = {}
    for tau in (0.0, 3.0):
        torch.manual_seed(0)  # the same adversary and random starts for both
        composed = build_defence(["asa", name], {"asa": ASAParams(tau=tau), name: registry.get(name).Params(**params)},
                                 adapter, registry)
        losses[tau] = composed.training_step(batch, lambda loss: loss.backward()).loss
        assert composed.parts[0]._last["asa_kept_units"] > 10  # 9 x kept would dominate the loss if it were in it
    assert losses[3.0] == pytest.approx(losses[0.0], rel=1e-6)


COMPOSED = 'name = ["asa", "freelb"]\n[asa]\ntau = 0.3\n[freelb]\nadv_steps = 2\nadv_lr = 0.05'


@pytest.fixture(scope="module")
def composed_run(tmp_path_factory, tiny_bert_dir, toy_data):
    """``advrobust train`` of asa+freelb from [defence.asa] / [defence.freelb] tables."""
    import tomli_w
    import tomllib

    root = tmp_path_factory.mktemp("composed")
    config = root / "config.toml"
    config.write_text(tomli_w.dumps({
        "model": {"backbone": str(tiny_bert_dir), "num_labels": 2, "max_length": 32},
        "data": {"train_file": str(toy_data["train"]), "dev_file": str(toy_data["dev"])},
        "defence": tomllib.loads(COMPOSED),
        "train": {"epochs": 2, "batch_size": 16, "lr": 5e-3, "warmup_ratio": 0.0, "seed": 7},
        "output": {"run_dir": str(root / "run")},
    }))
    assert main(["train", str(config)]) == 0
    return config, root / "run"


def test_the_set_form_gives_the_same_config_as_the_tables(composed_run, run_config):
    config, _ = composed_run
    from_tables = load_config(config)
    from_set = load_config(run_config(), ['defence.name=["asa","freelb"]', "defence.asa.tau=0.3",
                                          "defence.freelb.adv_steps=2", "defence.freelb.adv_lr=0.05"])
    assert from_set.defence.names == from_tables.defence.names == ["asa", "freelb"]
    assert from_set.defence.params == from_tables.defence.params
    assert from_tables.defence.params["asa"].tau == 0.3 and from_tables.defence.params["freelb"].adv_steps == 2


def test_composed_training_reports_both_and_saves_the_adversary_beside_a_plain_export(composed_run, tiny_bert_dir):
    _, run = composed_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["defence"] == "asa+freelb" and len(metrics["history"]) == 2
    assert all(0 < r < 1 for r in metrics["history"][0]["asa_mask_ratio_per_layer"])
    assert metrics["steps"] == 12  # 96 examples, batches of 16, 2 epochs
    info = json.loads((run / "asa_adversary.json").read_text())
    assert info["layers"] == [0, 1] and info["tau"] == 0.3
    keys = {}
    for name, path in (("run", run / "model"), ("plain", tiny_bert_dir)):
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            keys[name] = set(f.keys())  # noqa: SIM118 (safe_open is not a dict)
    assert keys["run"] == keys["plain"]  # the export is the backbone's own architecture, nothing added


def test_the_resolved_config_of_a_composed_run_is_the_same_run(composed_run):
    config, run = composed_run
    assert load_config(run / "config.resolved.toml").defence == load_config(config).defence


def test_asa_maps_draws_a_composed_runs_adversary(composed_run, tmp_path, capsys):
    _, run = composed_run
    out = tmp_path / "maps.png"
    assert main(["asa-maps", str(run), "--text", "the movie was really good", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out) in capsys.readouterr().out


def test_asa_maps_shows_the_masks_the_adversary_applies_in_training(composed_run, tmp_path):
    """compute_maps feeds each saved adversary the input of its layer, exactly as training does.

    The adversaries are freshly initialised (they mask about half the units; the trained ones of a
    tiny run may keep everything, and all-ones masks would match whatever the maps fed them).
    """
    import shutil

    from asa_plugin.defences.asa import ASADefence
    from asa_plugin.defences.asa.maps import compute_maps

    _, trained = composed_run
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    adapter = load_adapter(str(run / "model"), 2, attn_implementation="eager")
    adapter.model.eval()
    torch.manual_seed(3)
    defence = ASADefence(ASAParams(), adapter)
    defence.save_extras(run)  # replaces the trained adversaries
    text = "the movie was really good but the plot was dull"
    batch = dict(adapter.tokenizer([text], return_tensors="pt"))
    with torch.no_grad(), defence.adversarial_attention(batch) as masks:
        adapter.forward(batch)

    _, maps = compute_maps(run, text)
    assert [m.layer for m in maps] == [0, 1] and len(masks) == 2
    for layer_map, mask in zip(maps, masks):
        assert 0 < layer_map.masked_ratio < 1, layer_map.layer
        assert torch.equal(layer_map.mask, mask[0]), layer_map.layer


def test_resume_of_a_finished_composed_run_returns_its_metrics(composed_run):
    config, run = composed_run
    before = (run / "metrics.json").read_text()
    assert main(["train", str(config), "--resume"]) == 0
    assert (run / "metrics.json").read_text() == before


def test_a_composed_run_on_another_architecture(tmp_path, run_config):
    """The composition is not BERT-only: asa+pgd trains a tiny RoBERTa end to end."""
    backbone = tiny_model_dir(tmp_path / "roberta", "roberta")
    config = run_config(defence='name = ["asa", "pgd"]\n[pgd]\nadv_steps = 2\nepsilon = 0.5\nstep_size = 0.2',
                        train="max_steps = 3", backbone=backbone)
    assert main(["train", str(config)]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["defence"] == "asa+pgd" and metrics["steps"] == 3
    assert (tmp_path / "run" / "asa_adversary.safetensors").is_file()
