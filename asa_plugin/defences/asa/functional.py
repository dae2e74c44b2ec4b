"""ASA's maths as small pure functions: binarizer, gradient reversal, symmetric KL, mask -> bias.

Conventions: a mask ``M`` holds 1 for an attention unit (query i may attend to key j) that is
kept and 0 for one that is masked; masks are (B, L, L) and shared by every head of a layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MASK_VALUE = -1e4
"""The "large negative" added to the attention scores of a masked unit (BERT's classic value;
finite, so a fully masked row stays a valid softmax and fp16 does not overflow)."""


class _StraightThroughBinarize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scores)
        return (scores > 0).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (scores,) = ctx.saved_tensors
        sig = torch.sigmoid(scores)
        return grad * sig * (1 - sig)


def straight_through_binarize(scores: torch.Tensor) -> torch.Tensor:
    """Hard 0/1 (``scores > 0``) forward; the gradient of ``sigmoid(scores)`` backward."""
    return _StraightThroughBinarize.apply(scores)


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-scale`` backward.

    Placed between the adversary and the model, one backward pass makes the model descend
    the objective and the adversary ascend it.
    """
    return _GradientReversal.apply(x, scale)


def symmetric_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) + KL(Q || P) of the class distributions, averaged over the batch.

    logits_p, logits_q: (B, C). Zero iff the distributions agree; gradients reach both sides.
    """
    log_p = F.log_softmax(logits_p.float(), dim=-1)  # (B, C)
    log_q = F.log_softmax(logits_q.float(), dim=-1)  # (B, C)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1).mean()


def pair_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Token padding mask (B, L) of 1/0 -> (B, L, L) bool, True where query and key are real tokens."""
    real = attention_mask.bool()  # (B, L)
    return real[:, :, None] & real[:, None, :]  # (B, L, L)


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) -> additive (B, L, L): 0 between real tokens, ``MASK_VALUE`` where either is padding."""
    return (~pair_mask(attention_mask)).to(dtype) * MASK_VALUE  # (B, L, L)


def logistic_noise(like: torch.Tensor) -> torch.Tensor:
    """Difference of two Gumbel(0, 1) samples (a standard logistic), shaped like ``like``."""
    u = torch.rand_like(like).clamp(1e-6, 1 - 1e-6)
    return torch.log(u) - torch.log1p(-u)


def mask_to_bias(mask: torch.Tensor) -> torch.Tensor:
    """Mask (B, L, L) of 1 = keep / 0 = masked -> additive bias (B, 1, L, L) shared by all heads."""
    return ((1 - mask) * MASK_VALUE).unsqueeze(1)  # (B, 1, L, L)


def kept_units(mask: torch.Tensor) -> torch.Tensor:
    """Number of kept attention units of each example, counted in float32: (B, L, L) -> (B,).

    Float32 whatever the mask's dtype: under fp16 autocast the masks are float16, which holds
    integers exactly only up to 2,048 and overflows at 65,504, while one layer of 512 tokens has
    262,144 units. Exact up to 2^24 units per example.
    """
    return mask.sum(dim=(1, 2), dtype=torch.float32)  # (B,)
