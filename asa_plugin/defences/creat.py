"""``creat``: Contextualized representation-Adversarial Training (Wu et al., "Toward Adversarial
Training on Contextualized Language Representation", ICLR 2023; gingasan/CreAT).

The attack is optimised to fool the classifier *and* to move the encoder's contextualised
representation away from the clean one. From a Gaussian start (``init_std`` per entry, at real
tokens), ``adv_steps - 1`` ascent steps on the word-embedding perturbation maximise

    CE(x + delta) - temperature * sum_b cos(h_b(x + delta), h_b(x))

where ``h_b`` is example b's last-layer first-token state (``representation = "cls"``, the authors'
sentence-classification trainer) or, with ``representation = "tokens"``, the sum over its real tokens
of the per-token cosines averaged over the batch (their earlier version). Each step moves delta by
``adv_lr`` along the per-example L2-normalised gradient and projects it into the L2 ball of
``max_norm`` (the start itself is not projected, as in the authors' code). The ascent passes only
read the input gradient. The model trains on the mean of the clean loss and the final perturbed
pass's loss:

    loss = (CE(x) + CE(x + delta)) / 2

Passes per step: 1 clean + ``adv_steps`` perturbed (the first at the random start); with the default
2 steps that is 3 forwards and one ascent update, as the authors' trainer runs. Every pass's loss comes
from ``self.objective``, so ``creat`` composes with ASA; the representations are read from the
objective's first forward of each pass (ASA's clean one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from asa_plugin.defences.base import Backward, Batch, Defence, StepResult
from asa_plugin.defences.contrastive import capture_outputs
from asa_plugin.defences.perturbation import (
    ascent_direction,
    input_grad,
    project,
    token_mask,
    without_gradient_sync,
)
from asa_plugin.schema import option


@dataclass
class CreATParams:
    adv_steps: int = option(2, ge=1, help="perturbed passes K (K - 1 ascent updates); the authors' default 2")
    adv_lr: float = option(0.1, gt=0, help="size of one ascent step (L2, per example)")
    max_norm: float = option(0.1, gt=0, help="L2 bound of each example's perturbation")
    temperature: float = option(1.0, ge=0, help="weight of the representation-deviation term in the ascent "
                                                "(0 = plain embedding-space AT)")
    init_std: float = option(1e-2, ge=0, help="standard deviation of the Gaussian random start (per entry)")
    representation: Literal["cls", "tokens"] = option("cls", help="what the attack deviates: the first token's "
                                                                  "last hidden state (cls) or every token's")


def cls_similarity(hidden: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of cos(hidden_b, clean_b) (the authors' ``cos_loss`` on (B, H) states)."""
    return F.cosine_similarity(hidden.float(), clean.float(), dim=-1).sum()  # (B,) -> ()


def token_similarity(hidden: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over real tokens of cos(hidden_t, clean_t), mean over the batch (``cos_loss`` on (B, L, H)).

    ``hidden``, ``clean``: (B, L, H); ``mask``: (B, L, 1). Padding positions count zero.
    """
    cos = F.cosine_similarity(hidden.float() * mask, clean.float() * mask, dim=-1)  # (B, L)
    return (cos * mask.squeeze(-1)).sum(dim=1).mean()


class CreATDefence(Defence):
    """Embedding-space AT whose attack also deviates the last-layer contextual representation."""

    name = "creat"
    Params = CreATParams
    role = "procedure"
    supports_masked_lm = True
    step_cost = 2.9  # estimated, not timed yet: 3 forwards, one ascent

    def _pass(self, batch: Batch, delta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective loss, the representation of the objective's first forward: (B, H) or (B, L, H))."""
        embeds = self.adapter.embed(batch["input_ids"])  # (B, L, E)
        with capture_outputs(self.adapter) as outputs:
            loss = self.objective(batch, embeds if delta is None else embeds + delta)
        if not outputs:
            raise RuntimeError("the defence objective ran no forward pass of the model")
        if self.params.representation == "tokens":
            return loss, outputs[0].hidden_states[-1]  # (B, L, H)
        return loss, self.adapter.sequence_representation(outputs[0], batch, pooling="cls")  # (B, H)

    def similarity(self, hidden: torch.Tensor, clean: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The ascent's representation term (before ``temperature``)."""
        if self.params.representation == "tokens":
            return token_similarity(hidden, clean, token_mask(batch))
        return cls_similarity(hidden, clean)

    def ascend(self, batch: Batch, delta: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """One ascent update of ``delta`` (B, L, E) on CE - temperature * cos(h(x + delta), h(x))."""
        p, mask = self.params, token_mask(batch)
        with without_gradient_sync(self.adapter):
            delta = delta.detach().requires_grad_()
            loss, hidden = self._pass(batch, delta)
            ascent = loss - p.temperature * self.similarity(hidden, clean, batch)
            grad = input_grad(ascent, delta)  # (B, L, E), float32
        step = p.adv_lr * ascent_direction(grad, mask, "l2")
        return project(delta.detach() + step.to(delta.dtype), p.max_norm, "l2")

    def training_step(self, batch: Batch, backward: Backward) -> StepResult:
        p = self.params
        mask = token_mask(batch)  # (B, L, 1)
        clean_loss, clean = self._pass(batch, None)
        clean = clean.detach()  # (B, H) or (B, L, H)
        weight = self.adapter.input_embeddings().weight
        noise = torch.randn(*mask.shape[:2], weight.shape[-1], device=mask.device)  # (B, L, E)
        delta = (noise * p.init_std * mask).to(weight.dtype)
        for _ in range(p.adv_steps - 1):
            delta = self.ascend(batch, delta, clean)
        adversarial_loss, hidden = self._pass(batch, delta)
        loss = 0.5 * (clean_loss + adversarial_loss)
        backward(loss)
        cos = F.cosine_similarity(hidden.detach().float(), clean.float(), dim=-1)  # (B,) or (B, L)
        similarity = cos.mean() if cos.dim() == 1 else (cos * mask.squeeze(-1)).sum() / mask.sum()
        return StepResult(loss=loss.detach().item(),
                          metrics={"clean_loss": clean_loss.detach().item(),
                                   "adversarial_loss": adversarial_loss.detach().item(),
                                   "creat_cosine": similarity.item()})
