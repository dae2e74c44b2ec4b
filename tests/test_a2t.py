"""``a2t`` (Yoo & Qi 2021): adversarial examples generated during training by the harness's own ``a2t`` recipe.

The pure parts (which epochs attack, each step's share, where the attack stops) against TextAttack's
trainer.py; one step's loss and gradients recomputed by hand (they would not match if the adversarial examples
were dropped); the generated examples checked against the model they were generated on; a run killed mid-epoch
resumed to the same weights and metrics; the one-line refusals.
"""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from asa_plugin.attacks.a2t import (
    A2TParams,
    attack_epoch,
    attack_order,
    concat_batches,
    keep_until,
    step_share,
)
from attack_support import nltk_data_dir
from test_training import train_here, train_killed_at
from tiny import write_sentiment_tsv

from asa_plugin.plugins import get_plugin_manager


def textattack_attacks(epoch: int, clean: int, interval: int) -> bool:
    """trainer.py (TextAttack 0.3.x), ``train``: epochs are 1-based there."""
    return epoch > clean and (epoch - clean - 1) % interval == 0


EPOCH_CASES = [  # (num_clean_epochs, attack_epoch_interval, epochs, 1-based epochs that start with an attack)
    (1, 1, 4, [2, 3, 4]),  # the authors' defaults (train.py --num-clean-epochs 1, --attack-epoch-interval 1)
    (0, 1, 3, [1, 2, 3]),
    (1, 2, 6, [2, 4, 6]),
    (2, 3, 8, [3, 6]),
    (4, 1, 4, []),
]


@pytest.mark.parametrize("clean,interval,epochs,expected", EPOCH_CASES)
def test_attacks_start_the_epochs_textattack_attacks_at(clean, interval, epochs, expected):
    p = A2TParams(num_clean_epochs=clean, attack_epoch_interval=interval)
    got = [e + 1 for e in range(epochs) if attack_epoch(e, p)]
    assert got == expected == [e for e in range(1, epochs + 1) if textattack_attacks(e, clean, interval)]


@pytest.mark.parametrize("pool,batches", [(0, 3), (1, 6), (5, 6), (17, 3), (40, 6), (6, 6)])
def test_each_adversarial_example_joins_exactly_one_step_of_the_epoch(pool, batches):
    shares = [step_share(pool, batches, i) for i in range(batches)]
    assert [i for s in shares for i in range(pool)[s]] == list(range(pool))
    sizes = [s.stop - s.start for s in shares]
    assert max(sizes) - min(sizes) <= 1  # spread evenly over the steps


def test_the_attack_order_is_a_seeded_permutation_that_differs_per_epoch():
    assert sorted(attack_order(50, 7, 1)) == list(range(50))
    assert attack_order(50, 7, 1) == attack_order(50, 7, 1) != attack_order(50, 7, 2)


def test_attacking_stops_at_the_target_number_of_successes():
    outcomes = ["successful", "failed", "skipped", "successful", "maximized", "successful", "failed"]
    rows = [{"index": i, "outcome": o} for i, o in enumerate(outcomes)]
    kept, adversarial = keep_until(rows, 2)
    assert [r["index"] for r in kept] == [0, 1, 2, 3]  # TextAttack's num_successful_examples: stop at the 2nd
    assert [r["index"] for r in adversarial] == [0, 3]
    kept, adversarial = keep_until(rows, 10)  # fewer successes than wanted: every row, and what it gave
    assert len(kept) == 7 and [r["index"] for r in adversarial] == [0, 3, 4, 5]


@pytest.mark.parametrize("side", ["right", "left"])
def test_concatenated_batches_are_padded_on_the_tokenizers_side(side):
    class Tok:
        pad_token_id, padding_side = 9, side

    a = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
         "labels": torch.tensor([1])}
    b = {"input_ids": torch.tensor([[4]]), "attention_mask": torch.ones(1, 1, dtype=torch.long),
         "labels": torch.tensor([0])}
    out = concat_batches(a, b, Tok())
    expected_ids = [[1, 2, 3], [4, 9, 9]] if side == "right" else [[1, 2, 3], [9, 9, 4]]
    assert out["input_ids"].tolist() == expected_ids
    assert out["attention_mask"].tolist() == ([[1, 1, 1], [1, 0, 0]] if side == "right" else [[1, 1, 1], [0, 0, 1]])
    assert out["labels"].tolist() == [1, 0]


# --- one step, recomputed --------------------------------------------------------------------------------------
CLEAN = ["the movie was good", "bad film and awful plot", "i love this brilliant movie", "horrible dull mess"]
ADVERSARIAL = [["the movie was fine", None, 1], ["poor film and awful plot", None, 0], ["i hate it", None, 1]]


def a2t_with_pool(model_dir: Path, alpha: float, pool: list, batches: int):
    from asa_plugin.adapters.loading import load_adapter
    from asa_plugin.attacks.a2t import A2TDefence

    torch.manual_seed(0)
    adapter = load_adapter(str(model_dir), 2)
    adapter.model.eval()  # no dropout: the step is recomputed exactly
    defence = A2TDefence(A2TParams(alpha=alpha), adapter)
    defence.use_examples(pool, batches)
    batch = dict(adapter.tokenizer(CLEAN, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0, 1, 0])
    return adapter, defence, batch


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_a_step_trains_on_its_clean_batch_plus_its_share_of_adversarial_examples(tiny_bert_dir, alpha):
    adapter, defence, batch = a2t_with_pool(tiny_bert_dir, alpha, ADVERSARIAL, batches=1)
    result = defence.training_step(batch, lambda loss: loss.backward())
    got = grads(adapter.model)
    assert result.metrics["a2t_batch_adversarial"] == 3

    # by hand: TextAttack's loss, the mean over all 7 examples, the adversarial ones weighted by alpha
    adapter.model.zero_grad()
    clean = F.cross_entropy(adapter.forward(batch).logits, batch["labels"], reduction="none")  # (4,)
    adv = dict(adapter.tokenizer([e[0] for e in ADVERSARIAL], padding=True, return_tensors="pt"))
    adv_losses = F.cross_entropy(adapter.forward(adv).logits, torch.tensor([e[2] for e in ADVERSARIAL]),
                                 reduction="none")  # (3,)
    expected = (clean.sum() + alpha * adv_losses.sum()) / 7
    expected.backward()
    assert result.loss == pytest.approx(expected.item(), rel=1e-5)
    for name, g in grads(adapter.model).items():
        torch.testing.assert_close(got[name], g, atol=1e-6, rtol=1e-4, msg=name)

    # without the adversarial examples the step is the clean step: a different gradient
    adapter.model.zero_grad()
    F.cross_entropy(adapter.forward(batch).logits, batch["labels"]).backward()
    clean_only = grads(adapter.model)
    assert any(not torch.allclose(got[n], clean_only[n], atol=1e-6) for n in clean_only)


def test_an_epoch_without_adversarial_examples_is_the_vanilla_step(tiny_bert_dir):
    adapter, defence, batch = a2t_with_pool(tiny_bert_dir, 1.0, [], batches=1)
    result = defence.training_step(batch, lambda loss: loss.backward())
    got = grads(adapter.model)
    adapter.model.zero_grad()
    expected = F.cross_entropy(adapter.forward(batch).logits, batch["labels"])
    expected.backward()
    assert result.loss == pytest.approx(expected.item(), rel=1e-6)
    assert all(torch.equal(got[n], g) for n, g in grads(adapter.model).items())


# --- generation through the harness -----------------------------------------------------------------------------
def attack_section(cache: Path) -> dict:
    """The offline assets of the attack tests (GloVe stand-in, WordNet), one worker."""
    return {"workers": 1, "embedding_vocab_size": 8000, "nltk_data": nltk_data_dir(), "cache_dir": str(cache)}


def test_generated_examples_are_perturbations_that_flip_the_model_they_were_generated_on(
        tmp_path, trained_tiny, attack_data, attack_cache):
    from asa_plugin.adapters.loading import load_adapter
    from asa_plugin.attacks.a2t import A2TDefence
    from test_attack_recipes import predict

    from asa_plugin.config import load_config
    from asa_plugin.data import load_training_data
    from asa_plugin.defences.base import EpochStart

    pm = get_plugin_manager()
    cfg = load_config(data={"model": {"backbone": str(trained_tiny), "max_length": 32},
                            "data": {"train_file": str(write_sentiment_tsv(tmp_path / "train.tsv", 30, seed=5)),
                                     "dev_file": str(attack_data["dev"])},
                            "defence": {"name": "a2t"}, "attack": attack_section(attack_cache)})
    data = load_training_data(cfg.data, 2, pm.datasets)
    defence = A2TDefence(A2TParams(adv_share=0.2), load_adapter(str(trained_tiny), 2))
    start = EpochStart(1, cfg, tmp_path / "run", data.train, 4, None, pm)
    generation = defence.generate(start)

    rows = [json.loads(line) for d in sorted((tmp_path / "run" / "a2t" / "epoch-2").glob("round-*"))
            for line in (d / "results.jsonl").read_text().splitlines()]
    target = math.ceil(0.2 * 30)
    won = [r for r in rows if r["outcome"] == "successful"]
    assert len(generation.examples) == min(target, len(won)) > 0
    assert all(r["query_budget"] == 200 for r in rows)  # the authors' query_budget_train
    originals = {e.text for e in data.train}
    texts = [e[0] for e in generation.examples]
    assert all(t not in originals for t in texts)  # perturbed, not copied
    gold = [e[2] for e in generation.examples]
    assert all(p != g for p, g in zip(predict(trained_tiny, texts), gold))  # each flips the attacked model
    decided = generation.successful + generation.failed
    assert generation.stats()["a2t_attack_success_rate"] == pytest.approx(round(generation.successful / decided, 4))
    assert not (tmp_path / "run" / "a2t" / "epoch-2" / "model").exists()  # the weights' copy is removed


@pytest.fixture
def a2t_config(run_config, trained_tiny, attack_cache):
    """Two epochs from the trained tiny classifier: a clean one, then one with its A2T examples."""
    def make(**train) -> Path:
        lines = "\n".join(f"{k} = {v}" for k, v in {"lr": 1e-3, "checkpoint_every_steps": 2, "log_every_steps": 1,
                                                   **train}.items())
        return run_config(defence='name = "a2t"\nadv_share = 0.1', train=lines, backbone=trained_tiny,
                          extra={"attack": attack_section(attack_cache)})
    return make


def without_timing(metrics: dict) -> dict:
    timing = {"train_seconds", "train_cpu_seconds", "train_examples_per_second", "a2t_generation_seconds",
              "a2t_generation_seconds_total"}
    out = {k: v for k, v in metrics.items() if k not in timing}
    out["history"] = [{k: v for k, v in h.items() if k not in timing} for h in metrics["history"]]
    return out


@pytest.mark.slow  # minutes on 2 cores: two runs attack the model (the kill -9 resume tests of fgm, asa+freelb too)
def test_a_run_logs_its_examples_per_epoch_and_resumes_exactly_after_kill_minus_9(tmp_path, a2t_config):
    config = a2t_config()
    assert train_here(config, "--set", f"output.run_dir='{tmp_path / 'straight'}'") == 0
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    log = (tmp_path / "straight" / "train.log").read_text()
    assert "a2t epoch 2:" in log and "a2t epoch 1:" not in log  # the first epoch is clean (num_clean_epochs 1)
    second = straight["history"][1]
    assert second["a2t_adversarial_examples"] > 0, "no attack succeeded: the mixing below would go untested"
    assert f"a2t epoch 2: {second['a2t_adversarial_examples']} adversarial examples" in log
    assert straight["a2t_generation_seconds_total"] > 0 and straight["history"][0]["a2t_adversarial_examples"] == 0
    carried = [s["a2t_adversarial_trained"] for s in straight["step_history"]]  # logged at every step
    assert carried[:6] == [0] * 6 and all(carried[6:]) and sum(carried) == second["a2t_adversarial_examples"]

    killed_dir = tmp_path / "killed"
    killed = train_killed_at(9, config, "--set", f"output.run_dir='{killed_dir}'")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]  # mid epoch 2, after its generation
    assert train_here(config, "--set", f"output.run_dir='{killed_dir}'", "--resume") == 0
    resumed = json.loads((killed_dir / "metrics.json").read_text())
    assert without_timing(resumed) == without_timing(straight)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(killed_dir / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "a2t epoch 2:" not in (killed_dir / "train.log").read_text().split("resumed from")[-1]  # not redone


# --- refusals and registration ----------------------------------------------------------------------------------
def test_a_missing_attack_asset_stops_the_run_in_one_line_before_the_first_step(tmp_path, run_config, capsys,
                                                                               attack_cache):
    config = run_config(defence='name = "a2t"',
                        extra={"attack": {**attack_section(attack_cache), "embedding_path": str(tmp_path / "nowhere"),
                                          "download": False}})
    assert train_here(config) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "recipe 'a2t' cannot run" in err[-1] and "Traceback" not in "\n".join(err)
    assert "epoch 1:" not in (tmp_path / "run" / "train.log").read_text()  # refused before training


def test_pretraining_with_a2t_is_refused_in_one_line(tmp_path):
    from asa_plugin.config import load_config
    from asa_plugin.errors import ConfigError
    from asa_plugin.pretraining.task import check_defences

    cfg = load_config(data={"defence": {"name": "a2t"}})
    with pytest.raises(ConfigError) as caught:
        check_defences(cfg, get_plugin_manager().defences)
    assert "'a2t' does not support masked-LM pre-training" in str(caught.value) and "\n" not in str(caught.value)


def test_defence_trainer_refuses_a2t_in_one_line(tmp_path, tiny_bert_dir):
    from asa_plugin.adapters.loading import load_adapter
    from transformers import TrainingArguments

    from asa_plugin.hf import DefenceTrainer

    adapter = load_adapter(str(tiny_bert_dir), 2)
    args = TrainingArguments(str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(ValueError) as caught:
        DefenceTrainer(model=adapter.model, args=args, defence="a2t", processing_class=adapter.tokenizer)
    assert "a2t" in str(caught.value) and "advrobust train" in str(caught.value) and "\n" not in str(caught.value)


def test_a2t_is_a_built_in_defence():
    entry = get_plugin_manager().defences.entry("a2t")
    assert entry.plugin == "builtin_recipes" and entry.value.Params is A2TParams  # registered beside the harness
