"""``pgd``: projected gradient ascent on word embeddings, the embedding-space adversarial
training popularised for text by FreeLB/TextDefender-style code (the projected-gradient view of
adversarial training is Madry et al., ICLR 2018; the step schedule below is not theirs).

From a start (zero, or a small random start of magnitude ``init_mag`` at real tokens), ``adv_steps``
ascent steps of size ``step_size`` (L2: per-example normalized gradient, Linf: its sign), each
projected back into the ``epsilon`` ball per example (``epsilon = 0``: unbounded), make the
adversarial embeddings. Ascent passes only read the input gradient (no parameter gradient is
accumulated). The step trains CE(clean) + CE(adversarial), or CE(adversarial) alone with
``include_clean = false``.

Passes per step: ``adv_steps + 1`` with the defaults (the clean pass supplies the first ascent
direction); with a random start the first direction needs its own pass, and without the clean term
no trained clean pass is run.

TextDefender's PGD (Li et al., EMNLP 2021) is ``adv_steps = 5, step_size = 0.03, init_mag = 0.05,
epsilon = 0, include_clean = false``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from asa_plugin.defences.base import Backward, Batch, Defence, StepResult
from asa_plugin.defences.perturbation import (
    ascent_direction,
    input_gradient,
    perturbed_loss,
    project,
    random_init,
    token_mask,
    without_gradient_sync,
    zero_delta,
)
from asa_plugin.schema import option


@dataclass
class PGDParams:
    adv_steps: int = option(3, ge=1, help="ascent steps K")
    epsilon: float = option(0.1, ge=0, help="radius of each example's perturbation ball; 0 = unbounded")
    step_size: float = option(0.03, gt=0, help="size of one ascent step")
    norm: Literal["l2", "linf"] = option("l2", help="ball and step geometry: l2 or linf (per entry)")
    init_mag: float = option(0.0, ge=0, help="random start of this magnitude (FreeLB's, normalized by "
                                             "sequence length); 0 = start at the clean embeddings")
    include_clean: bool = option(True, help="also train the clean loss (false: adversarial loss only)")

    def __post_init__(self) -> None:
        if self.norm == "linf" and self.epsilon > 0 and self.step_size > self.epsilon:
            raise ValueError(f"defence.step_size {self.step_size} is larger than defence.epsilon {self.epsilon}: "
                             f"with norm = \"linf\" every step would be clipped to the box; use step_size <= "
                             f"epsilon (e.g. epsilon / adv_steps)")


class PGDDefence(Defence):
    """K projected ascent steps inside an epsilon ball around the word embeddings."""

    name = "pgd"
    Params = PGDParams
    role = "procedure"
    supports_masked_lm = True
    step_cost = 3.359  # measured: benchmarks/results/defence_cost_cpu.json (K=3)

    def _bound(self, delta: torch.Tensor) -> torch.Tensor:
        p = self.params
        return project(delta, p.epsilon, p.norm) if p.epsilon > 0 else delta

    def adversarial_delta(self, batch: Batch, start: torch.Tensor, first_grad: torch.Tensor) -> torch.Tensor:
        """Run the ascent from ``start`` along ``first_grad`` (the gradient at ``start``); return the final delta."""
        p = self.params
        mask = token_mask(batch)  # (B, L, 1)
        delta, grad = start, first_grad  # (B, L, E) each
        for step in range(p.adv_steps):
            delta = self._bound(delta + p.step_size * ascent_direction(grad, mask, p.norm)) * mask
            if step < p.adv_steps - 1:
                grad = input_gradient(self, batch, delta)
        return delta.detach()

    def training_step(self, batch: Batch, backward: Backward) -> StepResult:
        p = self.params
        mask = token_mask(batch)  # (B, L, 1)
        metrics: dict[str, torch.Tensor] = {}  # read when logged
        total = torch.zeros((), device=batch["input_ids"].device)
        if p.include_clean:
            probe = zero_delta(self.adapter, batch)  # (B, L, E); its grad is the clean embedding gradient
            with without_gradient_sync(self.adapter):  # one all-reduce per step: the adversarial backward's
                clean = perturbed_loss(self, batch, probe)
                backward(clean)
            metrics["clean_loss"] = clean.detach()
            total = total + metrics["clean_loss"]
        if p.init_mag > 0:
            weight = self.adapter.input_embeddings().weight
            start = self._bound(random_init(mask, weight.shape[-1], p.init_mag).to(weight.dtype))  # (B, L, E)
            first_grad = input_gradient(self, batch, start)
        elif p.include_clean:
            start, first_grad = torch.zeros_like(probe.grad), probe.grad
        else:
            start = zero_delta(self.adapter, batch).detach()
            first_grad = input_gradient(self, batch, start)
        delta = self.adversarial_delta(batch, start, first_grad)
        adversarial = perturbed_loss(self, batch, delta)
        backward(adversarial)
        metrics["adversarial_loss"] = adversarial.detach()
        total = total + metrics["adversarial_loss"]
        return StepResult(loss=total, metrics=metrics)
