"""Injection routes: how a per-layer additive attention bias reaches an architecture's scores.

A route installs forward hooks only; it never replaces, wraps or adds modules, so the module
tree and ``state_dict`` keys are identical while the bias is active and after it is removed
(checkpoints written during training stay plain Hugging Face checkpoints). Each route returns
the hook handles; removing them restores the model exactly.

Routes are looked up by the ``route`` column of :mod:`asa_plugin.adapters.table`. transformers 5
sends attention through ``AttentionInterface``; a route for it (registering a wrapping attention
function that adds the bias to ``attention_mask``) goes in :data:`ROUTES` and is selected in the
table. Defences only ever call ``adapter.attention_bias(provider)`` and never see routes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from asa_plugin.adapters.base import BiasProvider
from asa_plugin.adapters.table import Architecture
from torch import nn


# --- pure maths --------------------------------------------------------------------------------
def add_to_additive_mask(mask: torch.Tensor | None, bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask (B, 1, 1|L, L) or None, plus bias (B, 1|heads, L, L), kept finite.

    Clamping at the dtype's minimum keeps ``mask_min + block_bias`` from reaching ``-inf`` (a
    fully blocked row would then give NaN instead of a uniform softmax).
    """
    bias = bias.to(dtype)
    total = bias if mask is None else mask.to(dtype) + bias  # (B, 1|heads, L, L)
    return total.clamp_min(torch.finfo(dtype).min)


def reweight_probabilities(probs: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``softmax(s + b)`` from ``p = softmax(s)`` (B, heads, L, L) and bias (B, 1|heads, L, L).

    ``softmax(s + b)_j = p_j exp(b_j) / sum_k p_k exp(b_k)``; subtracting the row maximum of ``b``
    keeps ``exp`` finite. Exact, with the gradients of an additive bias.
    """
    bias = bias.to(probs.dtype).clamp_min(torch.finfo(probs.dtype).min)
    weights = torch.exp(bias - bias.amax(dim=-1, keepdim=True))  # (B, 1|heads, L, L)
    scaled = probs * weights  # (B, heads, L, L)
    return scaled / scaled.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)


# --- argument access ---------------------------------------------------------------------------
@dataclass
class _Arguments:
    """Finds one argument of a module's forward, whether passed by keyword or by position."""

    name: str
    position: int

    def get(self, args: tuple, kwargs: dict) -> Any:
        if self.name in kwargs:
            return kwargs[self.name]
        return args[self.position] if len(args) > self.position else None

    def set(self, args: tuple, kwargs: dict, value: Any) -> tuple[tuple, dict]:
        if self.name not in kwargs and len(args) > self.position:
            args = args[:self.position] + (value,) + args[self.position + 1:]
        else:
            kwargs[self.name] = value
        return args, kwargs


def _mask_is_keep(arch: Architecture, mask: torch.Tensor | None) -> bool:
    """Whether this call's mask is a 0/1 keep mask (so the bias goes to the probabilities)."""
    if arch.mask_kind == "keep":
        return True
    if arch.mask_kind == "keep_2d_else_additive":
        return mask is not None and mask.dim() == 2
    return False


@dataclass
class _LayerCounter:
    """Layer index of each attention call: fixed per module, or counted when modules are shared."""

    index_of: dict[int, int]
    shared: bool
    calls: int = 0
    pending: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    def next_index(self, module: nn.Module) -> int:
        if not self.shared:
            return self.index_of[id(module)]
        index, self.calls = self.calls, self.calls + 1
        return index


def install_mask_argument_route(arch: Architecture, model: nn.Module, layers: list[nn.Module],
                                provider: BiasProvider) -> list[Any]:
    """Hooks the attention modules' mask argument (and, for keep masks, their probability dropout).

    ``layers`` holds one attention module per layer, bottom first; a module listed several times
    (ALBERT shares layers) gets its layer index from the order of calls within a forward.
    """
    hidden = _Arguments(arch.hidden_arg, 0)
    mask_arg = _Arguments(arch.mask_arg, arch.mask_position)
    shared = len({id(m) for m in layers}) < len(layers)
    counter = _LayerCounter({id(m): i for i, m in enumerate(layers)}, shared)
    handles = []

    def reset(_module, _args):
        counter.calls = 0
        counter.pending.clear()

    def before_attention(module, args, kwargs):
        states = hidden.get(args, kwargs)  # (B, L, H)
        bias = provider(counter.next_index(module), states)
        if bias is None:
            return None
        mask = mask_arg.get(args, kwargs)
        if _mask_is_keep(arch, mask):
            counter.pending.setdefault(id(module), []).append(bias)
            return None
        return mask_arg.set(args, kwargs, add_to_additive_mask(mask, bias, states.dtype))

    def after_attention(module, _args, _kwargs, _output):
        if counter.pending.get(id(module)):
            raise RuntimeError(f"{arch.model_type}: the attention bias was computed but never applied "
                               f"(no call of '{arch.probs_dropout}'); this attention implementation "
                               f"needs a route in asa_plugin.adapters.routes")

    def on_probabilities(attention: nn.Module):
        def hook(_dropout, args):
            queue = counter.pending.get(id(attention))
            if not queue:
                return None
            return (reweight_probabilities(args[0], queue.pop(0)),) + args[1:]

        return hook

    handles.append(model.register_forward_pre_hook(reset))
    for module in dict.fromkeys(layers):  # unique, in order
        handles.append(module.register_forward_pre_hook(before_attention, with_kwargs=True))
        if arch.probs_dropout is not None:
            handles.append(module.register_forward_hook(after_attention, with_kwargs=True))
            dropout = module.get_submodule(arch.probs_dropout)
            handles.append(dropout.register_forward_pre_hook(on_probabilities(module)))
    return handles


ROUTES: dict[str, Callable[..., list[Any]]] = {
    "mask_argument": install_mask_argument_route,
}
"""Route name (the table's ``route`` column) -> installer(arch, model, layers, provider) -> handles."""


def forward_parameters(module: nn.Module) -> set[str]:
    """Names the module's ``forward`` accepts (used to check a table row against the model)."""
    return set(inspect.signature(module.forward).parameters)
