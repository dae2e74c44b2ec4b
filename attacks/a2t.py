"""``a2t``: adversarial training on word-substitution examples generated during training (Yoo & Qi, Findings of
EMNLP 2021, "Towards Improving Adversarial Training of NLP Models"; QData/Textattack-A2T, whose train.py runs
TextAttack's ``Trainer``, textattack/trainer.py).

As the authors run it: the first ``num_clean_epochs`` epochs are clean; then, at the start of every
``attack_epoch_interval``-th epoch, the *current* model is attacked with the A2T recipe (gradient-ordered
word swaps, cheap constraints) on the training set in a seeded random order until ``adv_share`` x N attacks
have succeeded (TextAttack's ``num_successful_examples``), each attack under ``query_budget`` queries; the
successful (and maximized) examples, with their gold labels, join that epoch's training data, weighted by
``alpha`` in the loss. An epoch between two generations trains on clean data only (trainer.py: its
``adv_dataset`` is None there).

The attacks run through the harness (:func:`asa_plugin.attacks.runner.run_attack`): the recipe is the
registered ``a2t``, the worker processes and threads follow ``[attack]`` (``workers``, ``threads``, ``device``
and the offline assets), and each round of attacks is a resumable attack run under
``RUN/a2t/epoch-<n>/round-<k>/`` (``results.jsonl``: every generated example, ``summary.json``), against a copy
of the current weights exported there and deleted afterwards.

Deliberate difference: TextAttack appends the adversarial examples to the epoch's dataset, so that epoch has
more optimizer steps; here the number of steps is fixed in advance (the schedule, ``train.max_steps`` and
resume depend on it), and each step's batch carries its share of the adversarial examples instead (every one
exactly once per epoch, in a seeded order). The loss is TextAttack's: the mean over the step's clean and
adversarial examples of the cross-entropy, the adversarial ones weighted by ``alpha``.

Resume is exact: the generated examples, their order's cursor and the epoch's statistics travel with every
checkpoint (``defence_state``); a run killed while attacking re-exports the same weights and continues the
round's rows (each attack is seeded by its example).
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from asa_plugin.defences.base import Backward, Batch, Defence, EpochStart, StepResult
from asa_plugin.errors import UserError
from asa_plugin.schema import option

log = logging.getLogger("advrobust.train")
RECIPE = "a2t"
ADVERSARIAL_OUTCOMES = ("successful", "maximized")
"""TextAttack's trainer keeps Successful and Maximized results (trainer.py, ``_generate_adversarial_examples``)."""


@dataclass
class A2TParams:
    num_clean_epochs: int = option(1, ge=0, help="epochs trained on clean data before the first attack")
    attack_epoch_interval: int = option(1, ge=1, help="attack the model at the start of every N-th epoch after "
                                                      "the clean ones (the epochs between train on clean data)")
    adv_share: float = option(0.2, gt=0, le=1, help="adversarial examples per generation, as a share of the "
                                                    "training set (successful attacks, TextAttack's "
                                                    "num_train_adv_examples as a float)")
    query_budget: int = option(200, ge=1, help="model queries per attacked example (query_budget_train)")
    alpha: float = option(1.0, ge=0, help="weight of an adversarial example's loss (TextAttack's alpha)")


@dataclass
class Generation:
    """One epoch's adversarial examples and what they cost."""

    examples: list[list]  # [text, text_pair or None, label]
    attacked: int
    successful: int
    failed: int
    seconds: float

    def stats(self) -> dict[str, Any]:
        decided = self.successful + self.failed
        return {"a2t_adversarial_examples": len(self.examples), "a2t_attacked": self.attacked,
                "a2t_attack_success_rate": round(self.successful / decided, 4) if decided else None,
                "a2t_generation_seconds": round(self.seconds, 3)}


def attack_epoch(epoch: int, p: A2TParams) -> bool:
    """Whether 0-based ``epoch`` starts with an attack (trainer.py: ``epoch > num_clean_epochs`` and
    ``(epoch - num_clean_epochs - 1) % attack_epoch_interval == 0`` with 1-based epochs)."""
    return epoch >= p.num_clean_epochs and (epoch - p.num_clean_epochs) % p.attack_epoch_interval == 0


def attack_order(n: int, seed: int, epoch: int) -> list[int]:
    """The training examples in the seeded random order they are attacked in (TextAttack: ``shuffle=True``)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def step_share(pool: int, batches: int, cursor: int) -> slice:
    """Which of ``pool`` adversarial examples micro-batch ``cursor`` of ``batches`` carries: consecutive
    slices, every example once per full epoch."""
    return slice(cursor * pool // batches, (cursor + 1) * pool // batches)


def keep_until(rows: list[dict], target: int) -> tuple[list[dict], list[dict]]:
    """(rows attacked up to the ``target``-th success, their adversarial rows): TextAttack's Attacker stops
    at ``num_successful_examples``; ``rows`` are in attack order."""
    kept, won = [], 0
    for row in rows:
        if won >= target:
            break
        kept.append(row)
        won += row["outcome"] == "successful"
    return kept, [r for r in kept if r["outcome"] in ADVERSARIAL_OUTCOMES]


class A2TDefence(Defence):
    """Clean steps that carry their share of the epoch's A2T adversarial examples."""

    name = "a2t"
    Params = A2TParams
    role = "standalone"

    def __init__(self, params: A2TParams, adapter):
        super().__init__(params, adapter)
        self._epoch = -1  # the epoch the pool belongs to
        self._all: list[list] = []  # [text, text_pair, label]: the epoch's adversarial examples, shuffled
        self._pool: list[list] = []  # this process's share of them (every n-th under n processes)
        self._features: list[dict] | None = None  # the pool tokenized (not checkpointed: rebuilt from it)
        self._batches = 1
        self._cursor = 0  # micro-batches of this epoch done
        self._stats: dict[str, Any] = {}
        self._total_seconds = 0.0
        self._window = 0  # adversarial examples trained on since the last logged step
        self._checked = False  # the attack's assets were checked (before the first epoch)
        self._max_length = min(int(adapter.tokenizer.model_max_length), 512)

    # --- the epoch's examples ----------------------------------------------------------------------------
    def on_epoch_start(self, start: EpochStart) -> None:
        self._max_length = start.cfg.model.max_length  # the adversarial examples are tokenized as the data is
        if start.epoch == self._epoch:  # a resumed run re-entering its epoch: the checkpoint holds the pool
            return
        if start.train_examples is None:
            raise UserError("defence a2t attacks the training texts of a classification task; "
                            "it cannot run under advrobust pretrain")
        if not self._checked and any(attack_epoch(e, self.params) for e in range(start.epoch, start.epochs)):
            _on_main_process(start.accelerator, lambda: check_assets(start))  # before any slow work
        self._checked = True
        self._epoch, self._stats = start.epoch, {"a2t_adversarial_examples": 0}
        self.use_examples([], start.batches_per_epoch)
        if not attack_epoch(start.epoch, self.params):
            return
        generation = _on_main_process(start.accelerator, lambda: self.generate(start))
        self._total_seconds += generation.seconds
        self._stats = generation.stats()
        order = attack_order(len(generation.examples), start.cfg.train.seed + 1, start.epoch)
        self.use_examples([generation.examples[i] for i in order], start.batches_per_epoch)
        log.info("a2t epoch %d: %d adversarial examples from %d attacked (success rate %s, %.1f s)",
                 start.epoch + 1, len(generation.examples), generation.attacked,
                 self._stats["a2t_attack_success_rate"], generation.seconds)

    def generate(self, start: EpochStart) -> Generation:
        """Attack the current model on the training set until ``adv_share`` x N attacks succeed."""
        began = time.perf_counter()
        examples = start.train_examples
        target = math.ceil(self.params.adv_share * len(examples))
        order = attack_order(len(examples), start.cfg.train.seed, start.epoch)
        out = start.run_dir / "a2t" / f"epoch-{start.epoch + 1}"
        model_dir = self.adapter.export(out / "model")  # the workers load the current weights from here
        rows: list[dict] = []
        with _training_state_kept():
            for k, chunk in enumerate(_rounds(len(examples), target, rows)):
                picked = [examples[i] for i in order[chunk]]
                rows += _attack_round(start, picked, out / f"round-{k}", str(model_dir), self.params)
        shutil.rmtree(model_dir, ignore_errors=True)
        kept, adversarial = keep_until(rows, target)
        pairs = [[r["perturbed_text"], r.get("perturbed_text_pair"), int(r["gold_label"])] for r in adversarial]
        return Generation(pairs, len(kept), sum(r["outcome"] == "successful" for r in kept),
                          sum(r["outcome"] == "failed" for r in kept), time.perf_counter() - began)

    def use_examples(self, examples: list[list], batches: int) -> None:
        """Train on ``examples`` ([text, text_pair or None, label]) from the next micro-batch on, spread over
        ``batches`` micro-batches, this process on every n-th of them under n processes (what a generation
        does; the cost benchmark and tests call it directly)."""
        rank, world = _rank_and_world()
        self._all, self._features, self._batches, self._cursor = list(examples), None, max(1, batches), 0
        self._pool = self._all[rank::world]

    # --- per step ----------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, backward: Backward) -> StepResult:
        adversarial = self._adversarial_batch(batch)
        self._cursor += 1
        if adversarial is None:
            return super().training_step(batch, backward)
        merged = concat_batches(batch, adversarial, self.adapter.tokenizer)
        logits = self.adapter.forward(merged).logits  # (B + A, C)
        losses = F.cross_entropy(logits.float(), merged["labels"], reduction="none")  # (B + A,)
        weights = torch.ones_like(losses)
        weights[batch["labels"].shape[0]:] = self.params.alpha
        loss = (losses * weights).mean()  # trainer.py, training_step: mean of the weighted losses
        backward(loss)
        self._window += adversarial["labels"].shape[0]
        return StepResult(loss=loss.detach(), metrics={"a2t_batch_adversarial": adversarial["labels"].shape[0]})

    def _adversarial_batch(self, batch: Batch) -> Batch | None:
        """This micro-batch's adversarial examples, padded and on the batch's device; None when it has none."""
        share = step_share(len(self._pool), self._batches, self._cursor)
        if not self._pool or share.start >= share.stop:
            return None
        if self._features is None:
            self._features = _encode(self._pool, self.adapter.tokenizer, self._max_length)
        from transformers import DataCollatorWithPadding

        padded = DataCollatorWithPadding(self.adapter.tokenizer)(self._features[share])
        device = batch["input_ids"].device
        return {k: v.to(device) for k, v in padded.items() if k in batch}

    # --- metrics and resume ------------------------------------------------------------------------------
    def log_metrics(self) -> dict[str, Any]:
        """``a2t_adversarial_trained``: adversarial examples the steps since the last logged one trained on."""
        out, self._window = {"a2t_adversarial_trained": self._window}, 0
        return out

    def epoch_metrics(self) -> dict[str, Any]:
        return {**self._stats, "a2t_generation_seconds_total": round(self._total_seconds, 3)}

    def state_dict(self) -> dict[str, Any]:
        # the whole list, not this process's share: the main process writes the checkpoint's state for all
        return {"epoch": self._epoch, "examples": self._all, "batches": self._batches, "cursor": self._cursor,
                "stats": self._stats, "total_seconds": self._total_seconds, "window": self._window}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.use_examples(state["examples"], state["batches"])
        self._epoch, self._cursor, self._stats = state["epoch"], state["cursor"], state["stats"]
        self._total_seconds, self._window = state["total_seconds"], state.get("window", 0)


def attack_config(start: EpochStart, p: A2TParams):
    """The ``[attack]`` section as the A2T attacks use it: the recipe's own constraints, the authors' budget."""
    return replace(start.cfg.attack, recipes=[RECIPE], profile="stock", query_budget=p.query_budget)


def _cache_dir(start: EpochStart, attack_cfg) -> Path:
    import os

    return Path(attack_cfg.cache_dir or os.environ.get("TA_CACHE_DIR") or start.run_dir / "attack" / ".cache")


def check_assets(start: EpochStart) -> None:
    """Build the recipe once against a stand-in model, so a missing asset (WordNet, embeddings, the sentence
    encoder) is one line before the first epoch, not after the clean ones."""
    from asa_plugin.attacks.warmup import build_recipes

    attack_cfg = replace(attack_config(start, A2TParams()), cache_dir=str(_cache_dir(start, start.cfg.attack)))
    with _training_state_kept():
        build_recipes([RECIPE], attack_cfg, start.run_dir / "a2t", start.plugins)


def _rounds(n: int, target: int, rows: list[dict]):
    """Slices of the attack order, one per round, until ``target`` attacks succeeded or the data ran out.
    The first round attacks ``target`` examples; each next one what the success rate so far says is left
    (x 1.1), reading ``rows`` as the caller extends it."""
    taken = 0
    while taken < n:
        won = sum(r["outcome"] == "successful" for r in rows)
        if won >= target:
            return
        rate = won / taken if taken else 1.0
        size = min(n - taken, max(target - won, math.ceil(1.1 * (target - won) / max(rate, 0.01))))
        yield slice(taken, taken + size)
        taken += size


def _attack_round(start: EpochStart, picked: list, out: Path, model_dir: str, p: A2TParams) -> list[dict]:
    """Attack ``picked`` examples with the harness (workers and threads from ``[attack]``); their rows."""
    from asa_plugin.attacks.runner import AttackJob, run_attack

    cfg = start.cfg
    attack_cfg = attack_config(start, p)
    pairs = [e.text_pair for e in picked] if picked and picked[0].text_pair is not None else None
    job = AttackJob(recipe=RECIPE, cfg=attack_cfg, model_path=model_dir, texts=[e.text for e in picked],
                    labels=[e.label for e in picked], recipe_dir=out, data="training set (a2t)",
                    max_length=cfg.model.max_length, text_pairs=pairs, resume=True,
                    cache_dir=_cache_dir(start, attack_cfg),
                    progress=False, load_external=cfg.plugins.external, block=tuple(cfg.plugins.block))
    run_attack(job, start.plugins)
    from asa_plugin.attacks.results import read_rows

    return sorted(read_rows(out / "results.jsonl"), key=lambda r: r["index"])


class _training_state_kept:
    """Keep the training process's RNGs and torch thread count across an attack run in this process (the
    harness seeds every example's attack and sets the attack's threads; training must not notice)."""

    def __enter__(self):
        import numpy as np

        self.saved = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
                      torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                      torch.get_num_threads())

    def __exit__(self, *exc):
        import numpy as np

        from asa_plugin.threads import apply_threads

        python, numpy_state, cpu, cuda, threads = self.saved
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        apply_threads(threads, threads)
        return False


def _on_main_process(accelerator, make):
    """``make()`` on the main process, its result (or its UserError) sent to every process (one process:
    just ``make()``)."""
    if accelerator is None or accelerator.num_processes == 1:
        return make()
    import torch.distributed as dist

    box: list = [None]
    if accelerator.is_main_process:
        try:
            box = [("ok", make())]
        except UserError as exc:
            box = [("error", str(exc))]
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise UserError(value)
    return value


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 outside a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _encode(pool: list[list], tokenizer, max_length: int) -> list[dict]:
    """The adversarial examples as token lists plus ``labels`` (as the training set is encoded)."""
    from asa_plugin.training.batching import encode

    enc = encode(tokenizer, [e[0] for e in pool], [e[1] for e in pool], max_length)
    return [{k: enc[k][i] for k in enc.keys()} | {"labels": e[2]} for i, e in enumerate(pool)]


def concat_batches(a: Batch, b: Batch, tokenizer) -> Batch:
    """``a`` (B, L1) and ``b`` (A, L2) stacked into one batch (B + A, max(L1, L2)), padded on the
    tokenizer's side (``input_ids`` with its pad id, every other 2-D key with 0)."""
    width = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    out = {}
    for key in a:
        if a[key].dim() == 1:  # labels (B,)
            out[key] = torch.cat([a[key], b[key].to(a[key].dtype)])
            continue
        fill = (tokenizer.pad_token_id or 0) if key == "input_ids" else 0
        parts = [_pad_to(t.to(a[key].dtype), width, fill, tokenizer.padding_side) for t in (a[key], b[key])]
        out[key] = torch.cat(parts)  # (B + A, width)
    return out


def _pad_to(t: torch.Tensor, width: int, fill: int, side: str) -> torch.Tensor:
    """(N, L) -> (N, width), ``fill`` added on ``side``."""
    pad = (0, width - t.shape[1]) if side == "right" else (width - t.shape[1], 0)
    return F.pad(t, pad, value=fill)
