"""The optimizer of every advrobust training loop (``advrobust train`` and :class:`asa_plugin.hf.DefenceTrainer`).

One AdamW over the model and the defence's own modules (ASA's adversaries), with one weight-decay
rule for both; a defence module trains at its own ``lr`` attribute when it has one (the authors'
adversary learning rate, e.g. ``defence.adversary_lr``), else at the run's learning rate.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def decay_split(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(parameters with weight decay, without): no decay on biases and normalisation weights."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return decay, no_decay


def build_optimizer(model: nn.Module, defence_modules: Iterable[nn.Module], lr: float, weight_decay: float,
                    **adamw_kwargs) -> torch.optim.AdamW:
    """AdamW over ``model`` and ``defence_modules``; ``adamw_kwargs`` (betas, eps) go to AdamW as they are."""
    decay, no_decay = decay_split(model)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    for module in defence_modules:
        module_lr = getattr(module, "lr", None) or lr
        extra_decay, extra_no_decay = decay_split(module)
        groups += [{"params": extra_decay, "weight_decay": weight_decay, "lr": module_lr},
                   {"params": extra_no_decay, "weight_decay": 0.0, "lr": module_lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, **adamw_kwargs)
