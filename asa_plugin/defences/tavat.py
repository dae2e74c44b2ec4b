"""``tavat``: Token-Aware Virtual Adversarial Training (Li & Qiu, AAAI 2021), as TextDefender runs it
(RockyLzy/TextDefender, trainer/tavat.py).

The word-embedding perturbation is the sum of two parts:

- a sentence-level part ``delta_lb`` from FreeLB's random start (magnitude ``init_mag``), moved by
  ``adv_lr`` along the per-example normalised gradient;
- a token-level part ``delta_tok`` read from a **perturbation vocabulary**: a (V, E) table holding one
  accumulated perturbation per token id, initialised to U(-1, 1) * init_mag / sqrt(E). Each step it is
  gathered at the batch's token ids and normalised (over the whole batch, as TextDefender does; or per
  example), moved by ``adv_lr`` along each token's own normalised gradient, and given **per-token budgets**:
  each token's perturbation is scaled by its norm over the largest token norm of its sentence, so the
  tokens the attack pushes hardest keep the largest share. After the last pass the final token
  perturbations are added back to the table at their ids, so a token's perturbation accumulates over
  training (``token_vocabulary = false``: the word-embedding matrix itself is the source and nothing
  accumulates).

After each update the sum of both parts is projected into the L2 ball of ``max_norm`` per example. Every
pass trains (its full loss is back-propagated, as TextDefender's trainer does). The table is a frozen
parameter of a module the loop checkpoints with the model (``--resume`` continues with the same table)
and never exported; under several processes every process adds every process's update, so the tables
stay identical. Padding positions are never perturbed and never written to the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from asa_plugin.defences.base import Backward, Batch, Defence, StepResult
from asa_plugin.defences.perturbation import (
    TINY,
    ascent_direction,
    per_example_norm,
    perturbed_loss,
    random_init,
    token_mask,
)
from asa_plugin.schema import option


@dataclass
class TAVATParams:
    adv_steps: int = option(2, ge=1, help="perturbed passes K (K - 1 ascent updates), every one trained")
    adv_lr: float = option(0.05, gt=0, help="size of one ascent step (per example and per token)")
    init_mag: float = option(0.2, ge=0, help="magnitude of the random starts (sentence level and the table)")
    max_norm: float = option(0.5, ge=0, help="L2 bound of each example's total perturbation; 0 = unbounded")
    token_vocabulary: bool = option(True, help="accumulate token perturbations in a (V, E) table across steps")
    normalize: Literal["batch", "example"] = option("batch", help="scale of the gathered token perturbations: "
                                                                  "unit norm over the batch (TextDefender) or "
                                                                  "per example")


class PerturbationVocabulary(nn.Module):
    """The accumulated token-level perturbation of every token id: a frozen (V, E) float32 parameter,
    so checkpoints hold it and DDP neither reduces nor re-broadcasts it."""

    def __init__(self, vocab_size: int, dim: int, init_mag: float):
        super().__init__()
        table = (torch.rand(vocab_size, dim) * 2 - 1) * (init_mag / dim ** 0.5)  # (V, E)
        self.table = nn.Parameter(table, requires_grad=False)

    @torch.no_grad()
    def accumulate(self, ids: torch.Tensor, rows: torch.Tensor) -> None:
        """Add ``rows`` (N, E) at token ``ids`` (N,), every process's update on every process."""
        for gathered_ids, gathered_rows in _all_processes(ids, rows):
            self.table.index_put_((gathered_ids.to(self.table.device),),
                                  gathered_rows.to(self.table.device, torch.float32), accumulate=True)


def _all_processes(ids: torch.Tensor, rows: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ids, rows) of every process in rank order (this process's alone outside a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [(ids, rows)]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (ids.cpu(), rows.float().cpu()))
    return gathered


def token_budgets(delta_tok: torch.Tensor) -> torch.Tensor:
    """Scale each token's perturbation by its norm over the largest token norm of its example.

    ``delta_tok``: (B, L, E); padding rows are zero and stay zero.
    """
    norms = delta_tok.norm(dim=-1)  # (B, L)
    largest = norms.amax(dim=1, keepdim=True).clamp_min(TINY)  # (B, 1)
    return delta_tok * (norms / largest).unsqueeze(-1)


def per_token_step(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each real token's gradient (B, L, E) normalised over its own E entries (padding stays zero)."""
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0) * mask
    return grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def clip_total(delta_lb: torch.Tensor, delta_tok: torch.Tensor, max_norm: float):
    """Rescale both parts of examples whose total perturbation exceeds ``max_norm`` (L2) onto the ball."""
    norms = per_example_norm(delta_lb + delta_tok)  # (B,)
    scale = (max_norm / norms.clamp_min(TINY)).clamp(max=1.0).view(-1, 1, 1)
    return delta_lb * scale, delta_tok * scale


class TAVATDefence(Defence):
    """Sentence- and token-level perturbations, the latter accumulated per token id across training."""

    name = "tavat"
    Params = TAVATParams
    role = "procedure"
    supports_masked_lm = True
    step_cost = 2.0  # estimated, not timed yet: 2 passes

    def __init__(self, params: TAVATParams, adapter):
        super().__init__(params, adapter)
        weight = adapter.input_embeddings().weight
        self.vocabulary: PerturbationVocabulary | None = None
        if params.token_vocabulary:  # drawn right after the model, as ASA's adversaries are
            self.vocabulary = PerturbationVocabulary(weight.shape[0], weight.shape[1], params.init_mag)
            self.vocabulary.to(weight.device)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.vocabulary] if self.vocabulary is not None else []

    def gathered_tokens(self, batch: Batch, mask: torch.Tensor) -> torch.Tensor:
        """The token-level start (B, L, E): the source rows at the batch's ids, normalised."""
        source = self.vocabulary.table if self.vocabulary is not None else self.adapter.input_embeddings().weight
        rows = source.detach().float()[batch["input_ids"]] * mask  # (B, L, E)
        if self.params.normalize == "batch":
            return rows / rows.norm().clamp_min(TINY)
        return rows / per_example_norm(rows).clamp_min(TINY).view(-1, 1, 1)

    def training_step(self, batch: Batch, backward: Backward) -> StepResult:
        p = self.params
        mask = token_mask(batch)  # (B, L, 1)
        weight = self.adapter.input_embeddings().weight
        delta_lb = random_init(mask, weight.shape[-1], p.init_mag)  # (B, L, E), float32
        delta_tok = self.gathered_tokens(batch, mask)  # (B, L, E), float32
        total = 0.0
        for step in range(p.adv_steps):
            delta = (delta_lb + delta_tok).to(weight.dtype).requires_grad_()
            loss = perturbed_loss(self, batch, delta)
            backward(loss)
            total += loss.detach().item()
            if step == p.adv_steps - 1:
                break
            grad = delta.grad.float()  # (B, L, E): the same for both parts
            delta_lb = delta_lb + p.adv_lr * ascent_direction(grad, mask, "l2")
            delta_tok = token_budgets(delta_tok + p.adv_lr * per_token_step(grad, mask))
            if p.max_norm > 0:
                delta_lb, delta_tok = clip_total(delta_lb, delta_tok, p.max_norm)
        if self.vocabulary is not None:
            real = mask.squeeze(-1) > 0  # (B, L)
            self.vocabulary.accumulate(batch["input_ids"][real], delta_tok[real])
        return StepResult(loss=total, metrics={"adversarial_loss": total / p.adv_steps})
