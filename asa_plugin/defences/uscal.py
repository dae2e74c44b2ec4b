"""``uscal``: unsupervised contrastive adversarial learning (Miao et al., arXiv 2111.13301).

Positives come from two dropout passes of the same input (SimCSE) and from an adversarial
example whose perturbation *ascends the contrastive loss* (one FGM step of size ``epsilon`` on
InfoNCE(view 1, view 2) with respect to view 1's word embeddings), not the label loss:

    contrastive = InfoNCE(h_1, h_adv) + InfoNCE(h_2, h_adv)
    loss        = CE(clean) + alpha * contrastive          (alpha < 1)

The supervised task term is the objective of the first clean pass (``self.objective``, so ``uscal``
composes with ASA); the second dropout view and the adversarial view are plain forward passes,
since only their representations are used (composed with ASA, they skip its masked pass).
With ``pooling = "prompt"`` the three contrastive views are built on the template-wrapped batch
and the task term on the plain input (four passes instead of three).
"""

from __future__ import annotations

from dataclasses import dataclass

from asa_plugin.defences.base import Backward, Batch, Defence, StepResult
from asa_plugin.defences.contrastive import (
    ContrastiveOptions,
    Representations,
    info_nce,
)
from asa_plugin.defences.perturbation import fgm_delta, input_grad, token_mask, zero_delta
from asa_plugin.schema import option


@dataclass
class USCALParams(ContrastiveOptions):
    epsilon: float = option(0.1, gt=0, help="L2 norm of the perturbation per example (paper: 0.1-0.5)")
    alpha: float = option(0.5, gt=0, lt=1, help="weight (< 1) of the contrastive loss beside the task loss")


class USCALDefence(Defence):
    """SimCSE dropout views plus an adversarial view that ascends the contrastive loss."""

    name = "uscal"
    Params = USCALParams
    role = "procedure"
    step_cost = 3.458  # measured: benchmarks/results/defence_cost_cpu.json

    def __init__(self, params: USCALParams, adapter):
        super().__init__(params, adapter)
        self.representations = Representations(self, params.pooling, params.template)

    def training_step(self, batch: Batch, backward: Backward) -> StepResult:
        p, reps, embed = self.params, self.representations, self.adapter.embed
        view, positions = reps.view(batch)
        probe = zero_delta(self.adapter, view)  # (B, L, E)
        first_loss, first = reps.objective_and_representation(view, embed(view["input_ids"]) + probe,
                                                              positions)
        task = first_loss if view is batch else self.objective(batch, None)
        # Views 2 and adversarial need only representations, not the objective's loss: plain passes.
        second = reps.representation(view, None, positions)  # another dropout mask
        # The perturbation ascends the contrastive loss of view 1 against view 2.
        ascent = info_nce(first, second.detach(), p.temperature)
        grad = input_grad(ascent, probe, retain_graph=True)  # (B, L, E), float32
        delta = fgm_delta(grad, token_mask(view), p.epsilon)  # (B, L, E)
        adversarial = reps.representation(view, embed(view["input_ids"]) + delta, positions)
        contrastive = (info_nce(first, adversarial, p.temperature)
                       + info_nce(second, adversarial, p.temperature))
        loss = task + p.alpha * contrastive
        backward(loss)
        return StepResult(loss=loss.detach(),
                          metrics={"task_loss": task.detach(), "contrastive_loss": contrastive.detach()})
