"""Step losses kept on the device and read once per logged window.

Reading a CUDA tensor (``.item()``, ``float()``) waits for every kernel queued before it. The loop used to
read each micro-batch's loss (and average it over the processes, one all-reduce) as soon as the defence
returned it; :class:`PendingLosses` keeps each optimizer step's loss as a 0-d tensor and reads all of them
together when the loop needs a number: to log, before a checkpoint is written, and at the end of an epoch.
One host-device sync and one all-reduce per window instead of one of each per micro-batch.

A non-finite loss is still found, and named by its own step, before any checkpoint could keep the weights
it produced; the steps after it (up to the next read) run on, on the already-diverged weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def loss_tensor(value: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A defence's reported loss (a float or a 0-d tensor) as a detached float64 0-d tensor on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, dtype=torch.float64).reshape(())
    return torch.tensor(float(value), dtype=torch.float64, device=device)


@dataclass
class StepLoss:
    """One optimizer step's loss, read: the mean over its micro-batches and over the processes."""

    step: int
    epoch: int
    loss: float


@dataclass
class PendingLosses:
    """Optimizer steps whose loss has not been read yet (0-d tensors on the device)."""

    steps: list[tuple[int, int]] = field(default_factory=list)  # (global step, epoch), per step
    values: list[torch.Tensor] = field(default_factory=list)  # (), per step

    def add(self, step: int, epoch: int, micro_losses: list[torch.Tensor]) -> None:
        """Record ``step``'s micro-batch losses (their mean is the step's loss)."""
        self.steps.append((step, epoch))
        self.values.append(torch.stack(micro_losses).mean())

    def read(self, accelerator) -> list[StepLoss]:
        """Every pending step's loss, averaged over the processes; then none is pending.

        A collective call under several processes: every process makes it at the same step."""
        if not self.values:
            return []
        stacked = torch.stack(self.values)  # (steps,)
        if accelerator.num_processes > 1:
            stacked = accelerator.reduce(stacked, reduction="mean")
        read = [StepLoss(step, epoch, value) for (step, epoch), value in zip(self.steps, stacked.tolist())]
        self.steps, self.values = [], []
        return read


def first_non_finite(losses: list[StepLoss]) -> StepLoss | None:
    """The first step whose loss is NaN or infinite, if any."""
    return next((s for s in losses if not math.isfinite(s.loss)), None)
