"""The ``BackboneAdapter`` interface: uniform access to a HF sequence classifier.

Defences never touch architecture specifics: they ask the adapter for the input-embedding
layer, a forward on given embeddings, the sequence representation, the classifier head, and
a reversible per-layer additive attention bias.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput

Batch = dict[str, torch.Tensor]
BiasProvider = Callable[[int, torch.Tensor], "torch.Tensor | None"]
"""``provider(layer_index, hidden_states (B, L, H)) -> additive bias (B, 1|heads, L, L) or None``."""

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def ddp_wrapper(runner: nn.Module) -> nn.parallel.DistributedDataParallel | None:
    """The DistributedDataParallel wrapper ``runner`` is, or holds under ``torch.compile`` (whose
    ``OptimizedModule`` keeps the compiled module as ``_orig_mod``); None for a plain model."""
    module = getattr(runner, "_orig_mod", runner)
    return module if isinstance(module, nn.parallel.DistributedDataParallel) else None


class BackboneAdapter:
    """Wraps an ``AutoModelForSequenceClassification`` model and its tokenizer."""

    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        self.model = model
        self.tokenizer = tokenizer
        self.runner: nn.Module = model
        """What ``forward`` calls: the model itself, or Accelerate's prepared (DDP) wrapper of it."""

    # --- structure -------------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def input_embeddings(self) -> nn.Embedding:
        """The word-embedding layer (token ids -> vectors) that perturbation defences perturb."""
        return self.model.get_input_embeddings()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Word embeddings of ``input_ids`` (B, L) -> (B, L, H), before positions and norms."""
        return self.input_embeddings()(input_ids)

    def classifier_head(self) -> nn.Module:
        raise NotImplementedError

    def attention_modules(self) -> list[nn.Module]:
        """One self-attention module per layer, bottom first."""
        raise NotImplementedError

    # --- computation -----------------------------------------------------------------------
    def model_inputs(self, batch: Batch) -> Batch:
        return {k: v for k, v in batch.items() if k in MODEL_INPUTS}

    @contextmanager
    def unwrapped_runner(self) -> Iterator[None]:
        """Forwards inside go to the module a DistributedDataParallel ``runner`` wraps (compiled or not): the same
        computation without DDP's per-forward bookkeeping (for a recomputation inside the backward)."""
        wrapper = self.runner
        if (ddp := ddp_wrapper(wrapper)) is not None:
            self.runner = ddp.module
        try:
            yield
        finally:
            self.runner = wrapper

    def forward(self, batch: Batch, inputs_embeds: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> SequenceClassifierOutput:
        """Logits for ``batch`` (token ids, or ``inputs_embeds`` (B, L, H) in their place)."""
        inputs = self.model_inputs(batch)
        if inputs_embeds is not None:
            inputs.pop("input_ids", None)
            inputs["inputs_embeds"] = inputs_embeds
        return self.runner(**inputs, output_hidden_states=output_hidden_states, return_dict=True)

    def sequence_representation(self, outputs: SequenceClassifierOutput, batch: Batch,
                                pooling: Literal["cls", "mean"] = "cls") -> torch.Tensor:
        """(B, H) representation from ``outputs`` of a forward with ``output_hidden_states=True``."""
        last = outputs.hidden_states[-1]  # (B, L, H)
        if pooling == "cls":
            return last[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(last.dtype)  # (B, L, 1)
        return (last * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    @contextmanager
    def attention_bias(self, provider: BiasProvider) -> Iterator[None]:
        """Add ``provider``'s bias to every layer's attention scores inside the block; reversible."""
        raise NotImplementedError
        yield

    # --- export ----------------------------------------------------------------------------
    def export(self, out_dir: str | Path) -> Path:
        """Save a plain HF checkpoint (safetensors) plus the tokenizer."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        return out
