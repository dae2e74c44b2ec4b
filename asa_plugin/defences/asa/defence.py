"""``asa``: Adversarial Self-Attention (Wu et al., "Adversarial Self-Attention for Language
Understanding", AAAI 2023) as a trainable defence.

Each step runs a clean forward and an adversarial forward in which every adversarial layer's
attention is masked by its adversary's binary mask M_l (added as ``(1 - M_l) * MASK_VALUE`` to
the scores of all heads). One objective, one backward:

    loss = CE(clean) + w * (KL(clean||adv) + KL(adv||clean)) + tau^2 * kept_units   (+ CE(adv) if adversarial_ce)

(the tau term is added with its gradient but not its value, so the loss reported is the model's).

with ``w = divergence_weight = 0.5`` by default: the average of the two directions, as the official
code's ``divergence()`` (gingasan/adversarialSA, modeling/utils.py:38-46).

The masks pass a gradient-reversal layer before they touch the model or the tau term, so the
model *descends* the loss (fits the labels, stays stable under masking) while the adversaries
*ascend* it: they maximize the divergence and, through ``+tau^2 * kept_units``, are paid for
every unit they keep, i.e. charged for every unit they mask. Larger tau, weaker adversary.
The tau term depends on the adversaries alone (their inputs are gradient-stopped), so it
exerts no gradient on the model.

The adversaries act only inside :meth:`ASADefence.adversarial_attention`, an explicit context
entered by the objective; ``model.train()``/``model.eval()`` never switch them on, so
evaluation, export and attacks see the plain model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from asa_plugin.defences.asa import functional as asa_f
from asa_plugin.defences.asa.adversary import ASAAdversary
from asa_plugin.defences.asa.config import ASAParams
from asa_plugin.defences.base import Backward, Batch, Defence, StepResult
from asa_plugin.errors import ConfigError


class ASADefence(Defence):
    """Adversarial Self-Attention; composes as the objective of a procedure defence (e.g. FreeLB)."""

    name = "asa"
    Params = ASAParams
    role = "objective"
    supports_masked_lm = True
    step_cost = 2.075  # measured: benchmarks/results/defence_cost_cpu.json

    def __init__(self, params: ASAParams, adapter):
        super().__init__(params, adapter)
        num_layers = adapter.num_layers
        layers = params.layer_indices(num_layers)
        if layers[-1] >= num_layers:
            raise ConfigError(f"defence.layers: layer {layers[-1]} does not exist; the backbone has "
                              f"{num_layers} layers (0..{num_layers - 1})")
        init_std = getattr(adapter.config, "initializer_range", None)
        self.adversary = ASAAdversary(adapter.hidden_size, layers, params.projection_size or adapter.hidden_size,
                                      init_std=init_std)
        self.adversary.to(adapter.model.device)
        self.adversary.lr = params.adversary_lr  # read by the training loop's optimizer; None = train.lr
        self.objective = self.asa_objective
        self.epoch_counts = MaskCounts(self.adversary.layers)
        self.window_counts = MaskCounts(self.adversary.layers)
        self._last: dict[str, torch.Tensor] = {}

    # --- lifecycle -----------------------------------------------------------------------
    def trainable_modules(self) -> list[nn.Module]:
        return [self.adversary]

    def save_extras(self, run_dir: str | Path) -> None:
        """Save the trained adversaries beside (never inside) the exported model."""
        self.adversary.save(run_dir, num_layers=self.adapter.num_layers, tau=self.params.tau)

    # --- the adversarial context ----------------------------------------------------------
    @contextmanager
    def adversarial_attention(self, batch: Batch) -> Iterator[list[torch.Tensor]]:
        """Inside the block, forwards of the adapter run with the adversaries' masks.

        Yields a list that collects each adversarial layer's mask (B, L, L) as it is computed
        (after gradient reversal). Hooks exist only inside the block.
        """
        attention_mask = batch.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(batch["input_ids"])
        masks: list[torch.Tensor] = []

        def provider(layer: int, hidden: torch.Tensor) -> torch.Tensor | None:
            if not self.adversary.has_layer(layer):
                return None
            mask = self.adversary.mask(layer, hidden, attention_mask, noise=self.params.gumbel_noise)  # (B, L, L)
            self.epoch_counts.add(layer, mask.detach(), attention_mask)
            self.window_counts.add(layer, mask.detach(), attention_mask)
            mask = asa_f.grad_reverse(mask)  # model descends, adversary ascends
            masks.append(mask)
            return asa_f.mask_to_bias(mask)  # (B, 1, L, L)

        with self.adapter.attention_bias(provider):
            yield masks

    # --- objective ------------------------------------------------------------------------
    def asa_objective(self, batch: Batch, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """One pass of ASA's loss on ``batch`` (optionally on given input embeddings)."""
        labels = batch["labels"]
        self._refuse_layer_checkpointing()
        if self.params.recompute_for(batch["input_ids"].shape[1]):  # activations recomputed in the backward
            # A plain dict, not the collators' BatchEncoding: torch's pytree sees a BatchEncoding as one opaque
            # leaf, and checkpoint saves (and replays) a device's RNG state only for the device tensors it
            # finds among its arguments, so on CUDA the recomputation would draw other dropout masks.
            clean = checkpoint(self._recomputable_logits(), dict(batch), inputs_embeds, use_reentrant=False)  # (B, C)
        else:
            clean = self._logits(batch, inputs_embeds)  # (B, C)
        with self.adversarial_attention(batch) as masks:
            adv = self.adapter.forward(batch, inputs_embeds=inputs_embeds).logits  # (B, C)
        ce = F.cross_entropy(clean, labels)
        divergence = asa_f.symmetric_kl(clean, adv)
        kept = torch.stack([asa_f.kept_units(m) for m in masks]).sum(0).mean()  # float32: units per example
        # What the model descends; the tau term only moves the adversaries.
        model_loss = ce + self.params.divergence_weight * divergence
        if self.params.adversarial_ce:
            model_loss = model_loss + F.cross_entropy(adv, labels)
        self._last = {"asa_model_loss": model_loss.detach(), "asa_ce": ce.detach(),  # read when logged
                      "asa_symmetric_kl": divergence.detach(), "asa_kept_units": kept.detach()}
        # The tau term enters with its gradient and without its value (kept - kept.detach() is 0): the
        # gradients are those of model_loss + tau^2 * kept, and the value every caller sees, ASA alone or each
        # pass of a procedure (FreeLB, PGD, ...), is the model's loss, not thousands of kept units x tau^2.
        return model_loss + self.params.tau ** 2 * (kept - kept.detach())

    def _refuse_layer_checkpointing(self) -> None:
        """transformers' gradient checkpointing recomputes each layer in the backward, after the adversaries'
        hooks are gone: the masked pass would be recomputed unmasked (reentrant: other gradients, silently;
        non-reentrant: a CheckpointError)."""
        if getattr(self.adapter.model, "is_gradient_checkpointing", False):
            raise ConfigError("defence asa: the model has gradient checkpointing on (TrainingArguments("
                              "gradient_checkpointing=True) or gradient_checkpointing_enable()), which would recompute "
                              "the masked pass without its masks; turn it off (ASA's recompute_clean already "
                              "recomputes the clean pass to save memory)")

    def _recomputable_logits(self):
        """``_logits`` for ``checkpoint``: the first call is the forward; a later one is the recomputation
        inside the backward, which calls the module inside a DistributedDataParallel runner directly (a DDP
        forward there would start a new gradient reduction before the running one has finished; the module
        is the same, with Accelerate's autocast, so the recomputed activations are the forward's)."""
        calls = 0

        def logits(batch: Batch, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
            nonlocal calls
            calls += 1
            if calls == 1:
                return self._logits(batch, inputs_embeds)
            with self.adapter.unwrapped_runner():
                return self._logits(batch, inputs_embeds)

        return logits

    def _logits(self, batch: Batch, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        return self.adapter.forward(batch, inputs_embeds=inputs_embeds).logits  # (B, C)

    def training_step(self, batch: Batch, backward: Backward) -> StepResult:
        loss = self.objective(batch, None)  # its value is the model's loss (see asa_objective)
        backward(loss)
        return StepResult(loss=loss.detach(), metrics=dict(self._last))

    # --- metrics ---------------------------------------------------------------------------
    def mask_ratio_per_layer(self) -> list[float | None]:
        """Fraction of real attention units masked since the epoch began, per model layer."""
        return self.epoch_counts.ratios(self.adapter.num_layers)

    def epoch_metrics(self) -> dict[str, Any]:
        out = {"asa_mask_ratio_per_layer": self.mask_ratio_per_layer()}
        self.epoch_counts.reset()
        return out

    def log_metrics(self) -> dict[str, Any]:
        out = {"asa_mask_ratio_per_layer": self.window_counts.ratios(self.adapter.num_layers)}
        self.window_counts.reset()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_counts": self.epoch_counts.state(), "window_counts": self.window_counts.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch_counts.load(state.get("epoch_counts", {}))
        self.window_counts.load(state.get("window_counts", {}))


class MaskCounts:
    """Masked and total real (non-padding) attention units per adversarial layer, accumulated as
    tensors (no device sync per step) and saved with checkpoints as plain integers.

    Under several processes each counts its own batches; reading the ratios or the state first
    sums the counts of every process (a collective call: the training loop makes it on all of them
    at the same point), so every process reports and saves the counts of the whole run.
    """

    def __init__(self, layers: list[int]):
        self.layers = list(layers)
        self.reset()

    def reset(self) -> None:
        self._reset_local()
        self.total = torch.zeros(2, len(self.layers), dtype=torch.long)  # (masked|units, layers), all processes

    def _reset_local(self) -> None:
        self.masked: dict[int, Any] = {i: 0 for i in self.layers}
        self.units: dict[int, Any] = {i: 0 for i in self.layers}

    def add(self, layer: int, mask: torch.Tensor, attention_mask: torch.Tensor) -> None:
        real = asa_f.pair_mask(attention_mask)  # (B, L, L)
        self.masked[layer] = self.masked[layer] + (real & (mask == 0)).sum()
        self.units[layer] = self.units[layer] + real.sum()

    def _synchronize(self) -> None:
        """Move this process's counts into ``total``, summed over all processes."""
        from asa_plugin.collectives import sum_across_processes

        local = torch.tensor([[int(self.masked[i]) for i in self.layers],
                              [int(self.units[i]) for i in self.layers]], dtype=torch.long)  # (2, layers)
        self.total += sum_across_processes(local)
        self._reset_local()

    def ratios(self, num_layers: int) -> list[float | None]:
        """Per model layer: masked / units, ``None`` for a layer without an adversary or not yet seen."""
        self._synchronize()
        counts = {layer: (int(m), int(u)) for layer, m, u in zip(self.layers, *self.total.tolist())}
        masked_units = [counts.get(i, (0, 0)) for i in range(num_layers)]
        return [m / u if u else None for m, u in masked_units]

    def state(self) -> dict[str, dict[str, int]]:
        self._synchronize()
        masked, units = self.total.tolist()
        return {"masked": {str(i): v for i, v in zip(self.layers, masked)},
                "units": {str(i): v for i, v in zip(self.layers, units)}}

    def load(self, state: dict[str, dict[str, int]]) -> None:
        self.reset()
        for row, key in enumerate(("masked", "units")):
            for i, v in state.get(key, {}).items():
                if int(i) in self.layers:
                    self.total[row, self.layers.index(int(i))] = int(v)
