"""Shared maths of the embedding-perturbation defences (fgm, pgd, freelb, scal, uscal).

A perturbation ``delta`` has the shape of the word embeddings, (B, L, E). It is added to the
*output* of the word-embedding layer (``adapter.embed(input_ids) + delta``) and fed to the model
as ``inputs_embeds``: token ids and the embedding weight itself are never modified, so nothing is
left behind after a step. Norms are taken per example over all its (L, E) entries, and padding
positions (``attention_mask == 0``) always hold zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from asa_plugin.adapters.base import BackboneAdapter
    from asa_plugin.defences.base import Batch, Defence

Norm = Literal["l2", "linf"]
TINY = 1e-12
"""Floor of a norm before dividing by it (an all-zero gradient stays zero)."""


# --- pure maths ----------------------------------------------------------------------------
def token_mask(batch: Batch, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, L, 1) with 1 at real tokens and 0 at padding."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    return mask.unsqueeze(-1).to(dtype)  # (B, L, 1)


def per_example_norm(x: torch.Tensor, norm: Norm = "l2") -> torch.Tensor:
    """(B, ...) -> (B,): the L2 (or Linf) norm of each example's entries."""
    flat = x.flatten(1)  # (B, L*E)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)


def _per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Scale each example to unit L2 norm; all-zero examples stay zero."""
    return x / _per_example(per_example_norm(x).clamp_min(TINY), x)


def project(delta: torch.Tensor, radius: float, norm: Norm = "l2") -> torch.Tensor:
    """Project each example into the ``norm`` ball of ``radius`` (L2: rescale; Linf: clamp)."""
    if norm == "linf":
        return delta.clamp(-radius, radius)
    scale = (radius / per_example_norm(delta).clamp_min(TINY)).clamp(max=1.0)  # (B,)
    return delta * _per_example(scale, delta)


def ascent_direction(grad: torch.Tensor, mask: torch.Tensor, norm: Norm = "l2") -> torch.Tensor:
    """The steepest-ascent unit step for ``grad`` restricted to real tokens.

    L2: the gradient normalized per example; Linf: its sign. Non-finite entries (an fp16
    overflow) count as zero. The loss scale of mixed precision or gradient accumulation does not
    matter, since only the direction is kept.
    """
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0) * mask  # (B, L, E)
    return l2_normalize(grad) if norm == "l2" else grad.sign()


def random_init(mask: torch.Tensor, dim: int, magnitude: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """FreeLB's start: U(-1, 1) at real tokens, scaled by ``magnitude / sqrt(length * dim)``.

    ``mask`` is (B, L, 1); the result is (B, L, dim). Each example's L2 norm is at most
    ``magnitude`` (about magnitude / sqrt(3)), whatever its length.
    """
    shape = (*mask.shape[:2], dim)
    noise = torch.rand(shape, generator=generator, device=mask.device, dtype=mask.dtype)
    noise = (noise * 2 - 1) * mask  # (B, L, E)
    entries = mask.sum(dim=(1, 2)) * dim  # (B,)
    return noise * _per_example(magnitude / entries.clamp_min(1.0).sqrt(), noise)


def fgm_delta(grad: torch.Tensor, mask: torch.Tensor, epsilon: float) -> torch.Tensor:
    """One fast-gradient step: ``epsilon`` times the masked, per-example L2-normalized gradient."""
    return epsilon * ascent_direction(grad, mask, "l2")


# --- passes through the model -------------------------------------------------------------
def zero_delta(adapter: BackboneAdapter, batch: Batch) -> torch.Tensor:
    """A zero perturbation (B, L, E) that requires grad: its ``.grad`` is the embedding gradient."""
    weight = adapter.input_embeddings().weight
    ids = batch["input_ids"]
    return torch.zeros(*ids.shape, weight.shape[-1], dtype=weight.dtype, device=ids.device,
                       requires_grad=True)


def perturbed_loss(defence: Defence, batch: Batch, delta: torch.Tensor) -> torch.Tensor:
    """The defence's per-pass objective on word embeddings plus ``delta`` (composes with ASA)."""
    embeds = defence.adapter.embed(batch["input_ids"])  # (B, L, E)
    return defence.objective(batch, embeds + delta)


@contextmanager
def without_gradient_sync(adapter: BackboneAdapter) -> Iterator[None]:
    """Passes that only need the input gradient skip DDP's gradient synchronisation."""
    runner = adapter.runner
    if isinstance(runner, torch.nn.parallel.DistributedDataParallel):
        with runner.no_sync():
            yield
    else:
        yield


def input_gradient(defence: Defence, batch: Batch, delta: torch.Tensor) -> torch.Tensor:
    """d objective / d delta at ``delta``, leaving every parameter's ``.grad`` untouched."""
    with without_gradient_sync(defence.adapter):
        delta = delta.detach().requires_grad_()
        loss = perturbed_loss(defence, batch, delta)
        (grad,) = torch.autograd.grad(loss, delta)
    return grad
