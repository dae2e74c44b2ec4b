"""BERT-architecture adapter (BERT, MiniLM, and the encoders that share BERT's self-attention)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from asa_plugin.adapters.base import BackboneAdapter, BiasProvider


def _add_bias(mask: torch.Tensor | None, bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Extended additive mask (B, 1, 1|L, L) or None, plus bias (B, 1|heads, L, L)."""
    bias = bias.to(dtype)
    return bias if mask is None else mask.to(dtype) + bias


class BertAdapter(BackboneAdapter):
    """Self-attention of BERT-style encoders takes an additive ``attention_mask`` kwarg."""

    model_types = ("bert",)

    def _encoder(self) -> nn.Module:
        return getattr(self.model, self.model.base_model_prefix)

    def classifier_head(self) -> nn.Module:
        return self.model.classifier

    def attention_modules(self) -> list[nn.Module]:
        return [layer.attention.self for layer in self._encoder().encoder.layer]

    @contextmanager
    def attention_bias(self, provider: BiasProvider) -> Iterator[None]:
        handles = []
        for index, module in enumerate(self.attention_modules()):
            def pre_hook(mod, args, kwargs, _i=index):
                hidden = args[0] if args else kwargs["hidden_states"]  # (B, L, H)
                bias = provider(_i, hidden)
                if bias is not None:
                    kwargs["attention_mask"] = _add_bias(kwargs.get("attention_mask"), bias, hidden.dtype)
                return args, kwargs

            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
