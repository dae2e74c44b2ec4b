"""``pgd``: projected gradient descent on word embeddings (Madry et al., ICLR 2018).

The clean pass's embedding gradient gives the first ascent direction; ``adv_steps`` ascent
steps of size ``step_size`` (L2: normalized gradient, Linf: its sign), each projected back into
the ``epsilon`` ball per example, make the adversarial embeddings. Intermediate steps only read
the input gradient (no parameter gradient is accumulated); the step trains
CE(clean) + CE(final adversarial). That is ``adv_steps + 1`` forward/backward passes.
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
    token_mask,
    zero_delta,
)
from asa_plugin.schema import option


@dataclass
class PGDParams:
    adv_steps: int = option(3, ge=1, help="ascent steps K (K + 1 forward/backward passes per step)")
    epsilon: float = option(1.0, gt=0, help="radius of each example's perturbation ball")
    step_size: float = option(0.3, gt=0, help="size of one ascent step")
    norm: Literal["l2", "linf"] = option("l2", help="ball and step geometry: l2 or linf (per entry)")


class PGDDefence(Defence):
    """K projected ascent steps inside an epsilon ball around the word embeddings."""

    name = "pgd"
    Params = PGDParams
    role = "procedure"

    def adversarial_delta(self, batch: Batch, first_grad: torch.Tensor) -> torch.Tensor:
        """Run the ascent from zero, starting along ``first_grad``; return the final delta."""
        p = self.params
        mask = token_mask(batch)  # (B, L, 1)
        delta = torch.zeros_like(first_grad)  # (B, L, E)
        grad = first_grad
        for step in range(p.adv_steps):
            delta = delta + p.step_size * ascent_direction(grad, mask, p.norm)
            delta = project(delta, p.epsilon, p.norm) * mask
            if step < p.adv_steps - 1:
                grad = input_gradient(self, batch, delta)
        return delta.detach()

    def training_step(self, batch: Batch, backward: Backward) -> StepResult:
        probe = zero_delta(self.adapter, batch)  # (B, L, E)
        clean = perturbed_loss(self, batch, probe)
        backward(clean)
        delta = self.adversarial_delta(batch, probe.grad)
        adversarial = perturbed_loss(self, batch, delta)
        backward(adversarial)
        clean_value, adv_value = clean.detach().item(), adversarial.detach().item()
        return StepResult(loss=clean_value + adv_value,
                          metrics={"clean_loss": clean_value, "adversarial_loss": adv_value})
