"""``fgm``: the Fast Gradient Method on word embeddings (Miyato et al., ICLR 2017).

One clean pass gives the embedding gradient; one L2-normalized step of size ``epsilon`` (per
example, padding excluded) makes the adversarial embeddings; the step's loss is
CE(clean) + CE(perturbed). Both passes go through ``self.objective``, so ``fgm`` composes with an
objective defence such as ASA.
"""

from __future__ import annotations

from dataclasses import dataclass

from asa_plugin.defences.base import Backward, Batch, Defence, StepResult
from asa_plugin.defences.perturbation import (
    fgm_delta,
    perturbed_loss,
    token_mask,
    without_gradient_sync,
    zero_delta,
)
from asa_plugin.schema import option


@dataclass
class FGMParams:
    epsilon: float = option(0.1, gt=0, help="L2 norm of each example's embedding perturbation (per-example "
                                            "normalisation: 1.0 trains MiniLM into a constant classifier)")


class FGMDefence(Defence):
    """Clean pass, then one fast-gradient step on the word embeddings; both losses are trained."""

    name = "fgm"
    Params = FGMParams
    role = "procedure"
    supports_masked_lm = True
    step_cost = 1.978  # measured: benchmarks/results/defence_cost_cpu.json

    def training_step(self, batch: Batch, backward: Backward) -> StepResult:
        mask = token_mask(batch)  # (B, L, 1)
        probe = zero_delta(self.adapter, batch)  # (B, L, E); its grad is the embedding gradient
        with without_gradient_sync(self.adapter):  # one all-reduce per step: the last backward's
            clean = perturbed_loss(self, batch, probe)
            backward(clean)
        delta = fgm_delta(probe.grad, mask, self.params.epsilon)  # (B, L, E)
        adversarial = perturbed_loss(self, batch, delta)
        backward(adversarial)
        clean_value, adv_value = clean.detach(), adversarial.detach()
        return StepResult(loss=clean_value + adv_value,
                          metrics={"clean_loss": clean_value, "adversarial_loss": adv_value})
