"""``scal``: supervised contrastive adversarial learning (Miao et al., arXiv 2111.13301).

The adversarial example is made in embedding space from the label loss (one FGM step of size
``epsilon``, per example, padding excluded). The step trains

    CE(clean) + CE(adversarial) + contrastive_weight * InfoNCE(h_clean, h_adversarial)

where InfoNCE pulls each example's clean and adversarial representations together against the
other examples of the batch (cosine similarity / ``temperature``). Every pass's loss comes from
``self.objective`` and the representations from the same passes, so ``scal`` composes with ASA.

With ``pooling = "prompt"`` the contrastive pair is built on the template-wrapped batch (its own
FGM step, from the label loss on the wrapped input) while the two CE terms stay on the plain
input the classifier is evaluated on: four passes instead of two.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from asa_plugin.defences.base import Backward, Batch, Defence, StepResult
from asa_plugin.defences.contrastive import (
    ContrastiveOptions,
    Representations,
    info_nce,
)
from asa_plugin.defences.perturbation import fgm_delta, input_grad, token_mask, zero_delta
from asa_plugin.schema import option


@dataclass
class SCALParams(ContrastiveOptions):
    epsilon: float = option(0.1, gt=0, help="L2 norm of the FGM perturbation per example (paper: 0.1-0.5)")
    contrastive_weight: float = option(1.0, ge=0, help="weight of the InfoNCE term")


@dataclass
class AdversarialPair:
    """Clean and FGM-adversarial passes of one batch: their losses and representations."""

    clean_loss: torch.Tensor
    adversarial_loss: torch.Tensor
    clean: torch.Tensor = field(repr=False)  # (B, H)
    adversarial: torch.Tensor = field(repr=False)  # (B, H)


class SCALDefence(Defence):
    """FGM adversarial training plus InfoNCE between clean and adversarial representations."""

    name = "scal"
    Params = SCALParams
    role = "procedure"
    step_cost = 2.486  # measured: benchmarks/results/defence_cost_cpu.json

    def __init__(self, params: SCALParams, adapter):
        super().__init__(params, adapter)
        self.representations = Representations(self, params.pooling, params.template)

    def adversarial_pair(self, batch: Batch, mask_positions: torch.Tensor | None) -> AdversarialPair:
        reps = self.representations
        embed = self.adapter.embed
        probe = zero_delta(self.adapter, batch)  # (B, L, E)
        clean_loss, clean = reps.objective_and_representation(batch, embed(batch["input_ids"]) + probe,
                                                              mask_positions)
        grad = input_grad(clean_loss, probe, retain_graph=True)  # (B, L, E), float32
        delta = fgm_delta(grad, token_mask(batch), self.params.epsilon)  # (B, L, E)
        adv_loss, adversarial = reps.objective_and_representation(batch, embed(batch["input_ids"]) + delta,
                                                                  mask_positions)
        return AdversarialPair(clean_loss, adv_loss, clean, adversarial)

    def training_step(self, batch: Batch, backward: Backward) -> StepResult:
        task = self.adversarial_pair(batch, None)
        view, positions = self.representations.view(batch)
        pair = task if view is batch else self.adversarial_pair(view, positions)
        contrastive = info_nce(pair.clean, pair.adversarial, self.params.temperature)
        loss = task.clean_loss + task.adversarial_loss + self.params.contrastive_weight * contrastive
        backward(loss)
        return StepResult(loss=loss.detach(),
                          metrics={"clean_loss": task.clean_loss.detach(),
                                   "adversarial_loss": task.adversarial_loss.detach(),
                                   "contrastive_loss": contrastive.detach()})
