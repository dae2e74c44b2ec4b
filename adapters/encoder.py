"""The table-driven adapter: one class serves every encoder listed in :mod:`asa_plugin.adapters.table`.

A plugin adds an architecture without subclassing::

    from asa_plugin.adapters.encoder import adapter_for
    from asa_plugin.adapters.table import Architecture

    @hookimpl
    def advrobust_register_adapters(register):
        register("my-bert", adapter_for(Architecture("my-bert", attention="enc.layer.*.attn",
                                                     classifier="head")))
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from asa_plugin.adapters.base import BackboneAdapter, Batch, BiasProvider
from asa_plugin.adapters.routes import ROUTES, forward_parameters
from asa_plugin.adapters.table import ARCHITECTURES, Architecture
from torch import nn


def resolve_modules(root: nn.Module, pattern: str) -> list[nn.Module]:
    """Modules at a dotted ``pattern`` under ``root``; ``*`` expands every child, in order."""
    found = [root]
    for part in pattern.split("."):
        if part == "*":
            found = [child for module in found for child in module.children()]
        else:
            found = [getattr(module, part) for module in found]
    return found


class EncoderAdapter(BackboneAdapter):
    """Adapter for any architecture with a row in the table (or given through :func:`adapter_for`)."""

    architecture: ClassVar[Architecture | None] = None
    """Set by :func:`adapter_for`; ``None`` looks the row up by ``config.model_type``."""

    model_types = tuple(ARCHITECTURES)

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        self.arch = self.architecture or ARCHITECTURES[model.config.model_type]
        self._attention = self._layer_attention_modules()
        missing = [m for m in dict.fromkeys(self._attention)
                   if not {self.arch.mask_arg, self.arch.hidden_arg} <= forward_parameters(m)]
        if missing:
            raise TypeError(f"{self.arch.model_type}: attention module {type(missing[0]).__name__} has no "
                            f"'{self.arch.mask_arg}'/'{self.arch.hidden_arg}' argument; fix the table row")

    # --- structure ---------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """Attention calls per forward (``num_hidden_layers`` for every built-in architecture)."""
        return len(self._attention)

    @property
    def embedding_size(self) -> int:
        """Width of the word embeddings (differs from ``hidden_size`` in ALBERT and ELECTRA)."""
        return self.input_embeddings().embedding_dim

    def classifier_head(self) -> nn.Module:
        return self.model.get_submodule(self.arch.classifier)

    def attention_modules(self) -> list[nn.Module]:
        return list(self._attention)

    def _layer_attention_modules(self) -> list[nn.Module]:
        """One attention module per layer; ALBERT's shared groups repeat as the model calls them."""
        unique = resolve_modules(self.model, self.arch.attention)
        layers = self.config.num_hidden_layers
        if len(unique) == layers:
            return unique
        groups = getattr(self.config, "num_hidden_groups", None)
        if not groups or len(unique) % groups:
            raise TypeError(f"{self.arch.model_type}: found {len(unique)} attention modules for {layers} layers")
        per_group = len(unique) // groups
        ordered = []
        for i in range(layers):  # ALBERT: layer i runs every inner layer of group i * groups // layers
            group = i * groups // layers
            ordered += unique[group * per_group:(group + 1) * per_group]
        return ordered

    # --- computation -------------------------------------------------------------------------
    def model_inputs(self, batch: Batch) -> Batch:
        return {k: v for k, v in batch.items() if k in self.arch.inputs}

    @contextmanager
    def attention_bias(self, provider: BiasProvider) -> Iterator[None]:
        install = ROUTES[self.arch.route]
        handles = install(self.arch, self.model, self._attention, provider)
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def adapter_for(architecture: Architecture) -> type[EncoderAdapter]:
    """An adapter class bound to one table row (for plugins adding an architecture)."""
    name = "".join(p.capitalize() for p in architecture.model_type.replace("-", "_").split("_")) + "Adapter"
    return type(name, (EncoderAdapter,), {"architecture": architecture, "model_types": (architecture.model_type,)})
