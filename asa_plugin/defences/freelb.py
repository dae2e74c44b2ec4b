"""``freelb``: Free Large-Batch adversarial training (Zhu et al., ICLR 2020).

From a small random start (uniform noise at real tokens, magnitude ``init_mag`` normalized by
sequence length), K ascent steps on the word-embedding perturbation; every step's loss / K is
back-propagated, so the parameter gradients average over the K adversarial points ("free"
large batch). Each step moves delta by ``adv_lr`` along the per-example normalized gradient and,
when ``max_norm > 0``, projects it into the L2 ball of that radius. Defaults follow the
TextDefender benchmark (Li et al., EMNLP 2021): 5 steps, adv_lr 0.03, init_mag 0.05, no bound.

``freelb++`` is the same procedure at the benchmark's FreeLB++ setting: 10 ascent steps (the rest as
FreeLB's), whose larger unbounded perturbation the paper found more robust (docs/baselines.md).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from asa_plugin.defences.base import Backward, Batch, Defence, StepResult
from asa_plugin.defences.perturbation import (
    ascent_direction,
    perturbed_loss,
    project,
    random_init,
    token_mask,
    without_gradient_sync,
)
from asa_plugin.schema import option


@dataclass
class FreeLBParams:
    adv_steps: int = option(5, ge=1, help="ascent steps K (K forward/backward passes per step)")
    adv_lr: float = option(0.03, gt=0, help="size of one ascent step (L2, per example)")
    init_mag: float = option(0.05, ge=0, help="magnitude of the random start, normalized by sequence length")
    max_norm: float = option(0.0, ge=0, help="L2 bound of each example's perturbation; 0 = unbounded")


@dataclass
class FreeLBPlusPlusParams(FreeLBParams):
    """FreeLB++ (Li et al., EMNLP 2021, section 6): FreeLB with more ascent steps, so the unbounded
    perturbation grows larger (up to about ``init_mag + (adv_steps - 1) * adv_lr``)."""

    adv_steps: int = option(10, ge=1, help="ascent steps K (FreeLB++: 10, twice FreeLB's 5)")


class FreeLBDefence(Defence):
    """K ascent steps with parameter gradients accumulated over the whole ascent."""

    name = "freelb"
    Params = FreeLBParams
    role = "procedure"
    supports_masked_lm = True
    step_cost = 2.874  # measured: benchmarks/results/defence_cost_cpu.json (K=3)

    def training_step(self, batch: Batch, backward: Backward) -> StepResult:
        p = self.params
        mask = token_mask(batch)  # (B, L, 1)
        weight = self.adapter.input_embeddings().weight
        delta = random_init(mask, weight.shape[-1], p.init_mag).to(weight.dtype)  # (B, L, E)
        total = torch.zeros((), device=delta.device)
        for step in range(p.adv_steps):
            last = step == p.adv_steps - 1
            delta.requires_grad_()
            # Parameter gradients accumulate locally over the ascent; only the last backward all-reduces them.
            with nullcontext() if last else without_gradient_sync(self.adapter):
                loss = perturbed_loss(self, batch, delta) / p.adv_steps
                backward(loss)
            total = total + loss.detach()  # read when logged, not per pass
            if last:
                break
            delta = delta.detach() + p.adv_lr * ascent_direction(delta.grad, mask, "l2")
            if p.max_norm > 0:
                delta = project(delta, p.max_norm, "l2")
        return StepResult(loss=total, metrics={"adversarial_loss": total})


class FreeLBPlusPlusDefence(FreeLBDefence):
    """``freelb++``: FreeLB at TextDefender's FreeLB++ setting (10 ascent steps, no norm bound)."""

    name = "freelb++"
    Params = FreeLBPlusPlusParams
    step_cost = 9.5  # estimated, not timed yet: 10 passes, at freelb's ~0.94 vanilla steps per extra pass
