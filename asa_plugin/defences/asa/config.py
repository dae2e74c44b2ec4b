"""``ASAParams``: the ``[defence]`` options of ``name = "asa"``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from asa_plugin.schema import option

AUTO_RECOMPUTE_FROM = 256
"""``recompute_clean = "auto"`` recomputes the clean pass for batches of at least this many (padded) tokens per
example. Where activations dominate, recomputing buys memory (MiniLM, 8 x 512: 1.28x vanilla's peak instead of
1.77x); at short lengths it buys little (32 x 128: 1.61x instead of 1.74x) for one more forward per step
(benchmarks/README.md, "ASA's recompute_clean: auto")."""


@dataclass
class ASAParams:
    """Options of Adversarial Self-Attention (Wu et al., AAAI 2023)."""

    EXECUTION_ONLY: ClassVar[frozenset[str]] = frozenset({"recompute_clean"})
    """Options that change how, not what, is computed (the same gradients, bit for bit on CPU): a resumed
    run or a bench rerun may change them."""

    tau: float = option(0.5, ge=0, help="charge per kept attention unit is tau^2: larger tau, weaker adversary, "
                                       "fewer masked units")
    layers: Literal["all"] | list[int] = option(
        "all", help='layers that carry an adversary: "all" or a list of 0-based layer indices (bottom = 0)')
    projection_size: int | None = option(
        None, ge=1, help="size of each adversary's query/key projections; default: the model's hidden size")
    gumbel_noise: bool = option(
        False, help="add logistic (Gumbel difference) noise to the adversary's scores before binarizing; "
                    "off in the published recipe, which binarizes deterministically")
    adversarial_ce: bool = option(False, help="also add cross-entropy on the adversarial logits to the loss")
    divergence_weight: float = option(
        0.5, gt=0, help="weight of the two KL directions between clean and masked predictions; 0.5 = their "
                        "average, as the official code; 1.0 = their sum")
    recompute_clean: Literal["auto"] | bool = option(
        "auto", help="keep only the clean pass's inputs and recompute its activations in the backward "
                     "(activation checkpointing, dropout replayed): the same gradients for one more forward, and "
                     "a peak of about one pass plus the masks instead of two (MiniLM, 8 x 512: 1.28x vanilla's "
                     "peak instead of 1.77x); true: always; false: never; auto: for batches of 256 tokens or "
                     "more, where the memory is saved, not below, where the forward is the cost")
    adversary_lr: float | None = option(
        None, gt=0, help="learning rate of the adversaries; none (the official setting) = train.lr, in the "
                         "model's optimizer with its weight-decay rule")

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):
            if not self.layers:
                raise ValueError('defence.layers must name at least one layer, or be "all"')
            bad = [i for i in self.layers if i < 0]
            if bad:
                raise ValueError(f"defence.layers must be 0-based layer indices >= 0, got {bad[0]}")
            if len(set(self.layers)) != len(self.layers):
                raise ValueError(f"defence.layers lists a layer twice: {self.layers}")

    def recompute_for(self, length: int) -> bool:
        """Whether a batch of ``length`` (padded) tokens per example recomputes its clean pass."""
        if self.recompute_clean == "auto":
            return length >= AUTO_RECOMPUTE_FROM
        return bool(self.recompute_clean)

    def layer_indices(self, num_layers: int) -> list[int]:
        """The adversarial layers of a ``num_layers``-layer model, sorted."""
        if self.layers == "all":
            return list(range(num_layers))
        return sorted(self.layers)
