"""Shared maths of the embedding-perturbation defences (fgm, pgd, freelb, scal, uscal).

A perturbation ``delta`` has the shape of the word embeddings, (B, L, E). It is added to the
*output* of the word-embedding layer (``adapter.embed(input_ids) + delta``) and fed to the model
as ``inputs_embeds``: token ids and the embedding weight itself are never modified, so nothing is
left behind after a step. Norms are taken per example over all its (L, E) entries, and padding
positions (``attention_mask == 0``) always hold zero.

Under fp16 the backward runs in float16, whose smallest positive value is 6e-8: the gradient of an
unscaled loss with respect to the embeddings underflows to zero for confidently classified examples,
which would silently remove their perturbation. :func:`input_grad` therefore scales the loss as the
loss scaler of mixed precision does (by the training loop's ``GradScaler`` scale, registered with
:func:`loss_scaler`, else 2^16), unscales in float32, and backs off when the scaled gradient overflows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from asa_plugin.adapters.base import BackboneAdapter
    from asa_plugin.defences.base import Batch, Defence

Norm = Literal["l2", "linf"]
TINY = 1e-12
"""Floor of a norm before dividing by it (an all-zero gradient stays zero)."""
INITIAL_LOSS_SCALE = 2.0 ** 16
"""The loss scale of input gradients under fp16 when no loss scaler is registered (torch's
``GradScaler`` starts at the same value)."""
BACKOFF, MAX_BACKOFFS = 2.0 ** -4, 4
"""On overflow the scale shrinks by ``BACKOFF`` and the gradient is taken again, at most ``MAX_BACKOFFS``
times (down to 2^0 from 2^16)."""
_scalers: list[Any] = []


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
    from asa_plugin.adapters.base import ddp_wrapper

    ddp = ddp_wrapper(adapter.runner)  # also under torch.compile
    if ddp is not None:
        with ddp.no_sync():
            yield
    else:
        yield


@contextmanager
def loss_scaler(scaler: Any) -> Iterator[None]:
    """Inside the block, input gradients are taken at ``scaler.get_scale()`` (a ``torch.amp.GradScaler``;
    ``None``, as Accelerate's scaler is without fp16, registers nothing)."""
    if scaler is None:
        yield
        return
    _scalers.append(scaler)
    try:
        yield
    finally:
        _scalers.remove(scaler)


def _half_precision(loss: torch.Tensor, inputs: torch.Tensor) -> bool:
    """Whether the backward of ``loss`` may run in float16 (so an unscaled gradient may underflow)."""
    device = loss.device.type
    autocast_fp16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
    return bool(_scalers) or autocast_fp16 or inputs.dtype == torch.float16


def input_grad(loss: torch.Tensor, inputs: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
    """d loss / d inputs in float32, taken without parameter ``.grad`` side effects.

    Full precision and bf16: one plain ``autograd.grad``. fp16: ``autograd.grad(loss * scale)`` / scale,
    so that small gradients do not underflow; an overflowing (non-finite) result is taken again at a
    smaller scale. Entries still non-finite at the smallest scale are returned as they are
    (:func:`ascent_direction` counts them as zero).
    """
    if not _half_precision(loss, inputs):
        (grad,) = torch.autograd.grad(loss, inputs, retain_graph=retain_graph)
        return grad.float()
    scale = float(_scalers[-1].get_scale()) if _scalers else INITIAL_LOSS_SCALE
    for _ in range(MAX_BACKOFFS):
        (grad,) = torch.autograd.grad(loss * scale, inputs, retain_graph=True)
        grad = grad.float() / scale  # (same shape as inputs), float32
        if torch.isfinite(grad).all():
            return grad
        scale *= BACKOFF
    (grad,) = torch.autograd.grad(loss * scale, inputs, retain_graph=retain_graph)
    return grad.float() / scale


def input_gradient(defence: Defence, batch: Batch, delta: torch.Tensor) -> torch.Tensor:
    """d objective / d delta at ``delta`` (float32), leaving every parameter's ``.grad`` untouched."""
    with without_gradient_sync(defence.adapter):
        delta = delta.detach().requires_grad_()
        loss = perturbed_loss(defence, batch, delta)
        return input_grad(loss, delta)
