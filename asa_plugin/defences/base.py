"""The ``Defence`` interface: what a training loop asks of a defence.

A defence owns one optimizer step's worth of forward/backward work. The loop hands it a batch
and a ``backward`` callable (Accelerate's, which scales for gradient accumulation and mixed
precision); the defence may call ``backward`` several times (embedding-perturbation methods
accumulate parameter gradients over ascent steps) and returns the step's loss for logging. The
loop then clips, steps the optimizer and scheduler, and zeroes gradients. No defence needs a
special case in the loop.

A defence may also own trainable modules (ASA's adversaries): the loop optimizes and
checkpoints them with the model, and they never reach the exported checkpoint.

Composition (``name = ["asa", "freelb"]``): an *objective* defence (one that changes what a
single forward pass optimizes, such as ASA) supplies ``objective``; a *procedure* defence (one
that changes how inputs are perturbed across passes, such as FreeLB) calls ``self.objective``
for every pass it runs. See :func:`compose`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from asa_plugin.errors import ConfigError

if TYPE_CHECKING:
    from asa_plugin.adapters.base import BackboneAdapter

Batch = dict[str, torch.Tensor]
Backward = Callable[[torch.Tensor], None]
Objective = Callable[[Batch, "torch.Tensor | None"], torch.Tensor]


@dataclass
class NoParams:
    """A defence without parameters."""


@dataclass
class EpochStart:
    """What the training loop tells a defence at the start of each epoch (:meth:`Defence.on_epoch_start`):
    enough to attack the current model on the training texts (A2T) without the defence reaching into the loop."""

    epoch: int  # 0-based
    cfg: Any  # the RunConfig
    run_dir: Path
    train_examples: Any  # the task's training examples (``text``, ``text_pair``, ``label``); None for pre-training
    batches_per_epoch: int  # micro-batches this process runs in a full epoch
    accelerator: Any
    plugins: Any  # the PluginManager (recipes, for the attack harness)
    epochs: int = 1  # epochs of the whole run (the last may be cut short by train.max_steps)


@dataclass(init=False)
class StepResult:
    """What one training step reports: the loss value and optional extra scalars, each given as a float or a
    detached 0-d tensor. The built-in defences give tensors, which the loop reads (``raw_loss``) only when it
    logs: reading a CUDA tensor waits for the device, once per logged window instead of once per pass.
    ``loss`` and ``metrics`` read them as floats."""

    raw_loss: float | torch.Tensor
    raw_metrics: dict[str, Any] = field(default_factory=dict)

    def __init__(self, loss: float | torch.Tensor, metrics: dict[str, Any] | None = None):
        self.raw_loss = loss
        self.raw_metrics = dict(metrics or {})

    @property
    def loss(self) -> float:
        """The loss as a float (a host-device sync when it is a CUDA tensor)."""
        return float(self.raw_loss)

    @property
    def metrics(self) -> dict[str, Any]:
        """The extra scalars, tensors read as floats."""
        return {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in self.raw_metrics.items()}


Role = Literal["objective", "procedure", "standalone"]
ROLES: tuple[str, ...] = ("objective", "procedure", "standalone")
DEFAULT_STEP_COST = 2.0
"""The step cost of a defence that does not declare one (about one extra forward/backward pass)."""


class Defence:
    """Base class of every defence.

    A subclass sets ``name`` and ``Params`` and declares its capabilities, which the rest of the toolkit reads
    from the class (a new defence is its file plus its register line; no table elsewhere lists it):
    ``role`` (how it composes), ``supports_masked_lm`` (whether ``advrobust pretrain`` takes it) and
    ``step_cost`` (what ``advrobust bench`` expects a training step of it to cost). The plugin manager checks
    them when the defence is registered (:func:`defence_class_problem`).
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    role: ClassVar[Role] = "standalone"
    """How the defence composes: ``objective`` (per-pass loss, e.g. ASA), ``procedure``
    (multi-pass input perturbation, e.g. FreeLB), ``standalone`` (does not compose). A composition
    (``name = ["asa", "freelb"]``) is one objective plus one procedure (:func:`check_composable`)."""
    supports_masked_lm: ClassVar[bool] = False
    """Whether ``advrobust pretrain`` may use it: its loss is built from ``adapter.forward(batch).logits``
    and ``batch["labels"]`` (through ``self.objective``), so it runs unchanged on masked-LM batches."""
    step_cost: ClassVar[float] = DEFAULT_STEP_COST
    """Seconds per training step relative to vanilla's (1.0) at the defaults. ``advrobust bench`` orders its
    training cells by it (the longest first) and estimates the time left from it; it changes no result. The
    built-ins' are measured (benchmarks/results/defence_cost_cpu.json: MiniLM, CPU, batch 32, length 64) or,
    where their class says so, estimated from their passes per step; a defence that does not declare one
    counts as :data:`DEFAULT_STEP_COST`. A composition costs the sum of its parts minus one vanilla step
    (:func:`composed_step_cost`)."""

    def __init__(self, params: Any, adapter: BackboneAdapter):
        self.params = params
        self.adapter = adapter
        self.objective: Objective = self.cross_entropy_objective

    # --- lifecycle -----------------------------------------------------------------------
    def trainable_modules(self) -> list[nn.Module]:
        """Modules the optimizer trains beside the model (never exported). A module may carry an
        ``lr`` attribute (float) to be optimized at that learning rate instead of ``train.lr``."""
        return []

    def attach(self) -> None:
        """Install whatever the defence injects into the model (hooks); called before training."""

    def detach(self) -> None:
        """Remove every injection so the model is a plain HF model again; called after training."""

    def save_extras(self, run_dir: Path) -> None:
        """Write defence-owned artifacts (e.g. ASA's adversaries) into the run directory, beside
        ``model/``; called once by the loop after the export."""

    def on_epoch_start(self, start: EpochStart) -> None:
        """Called by ``advrobust train`` before each epoch's first batch, and again when a resumed run re-enters
        an epoch (``start.epoch`` is then the epoch of the checkpoint): e.g. A2T generates that epoch's
        adversarial examples here. Nothing by default."""

    # --- per step ------------------------------------------------------------------------
    def cross_entropy_objective(self, batch: Batch, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Plain cross-entropy of the model on ``batch`` (optionally on given input embeddings)."""
        logits = self.adapter.forward(batch, inputs_embeds=inputs_embeds).logits  # (B, C)
        return F.cross_entropy(logits, batch["labels"])

    def training_step(self, batch: Batch, backward: Backward) -> StepResult:
        """Compute the step's loss, call ``backward`` on it (possibly several times), report it."""
        loss = self.objective(batch, None)
        backward(loss)
        return StepResult(loss=loss.detach())

    def epoch_metrics(self) -> dict[str, Any]:
        """Metrics gathered since the last call (e.g. ASA's mask ratio per layer); then reset."""
        return {}

    def log_metrics(self) -> dict[str, Any]:
        """Metrics gathered since the last logged step (every ``train.log_every_steps``); then reset."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable running state (e.g. metric counters) saved with each checkpoint, so a
        resumed run reports the same metrics as an uninterrupted one."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (called on ``--resume``)."""


def defence_class_problem(value: Any) -> str | None:
    """What is wrong with ``value`` registered as a defence class (None when nothing is): not a
    :class:`Defence` subclass, or a capability declared with a value the toolkit cannot use."""
    if not (isinstance(value, type) and issubclass(value, Defence)):
        return "is not a subclass of asa_plugin.defences.base.Defence"
    if value.role not in ROLES:
        return f"declares role = {value.role!r}, which is none of {', '.join(ROLES)}"
    cost = value.step_cost
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not math.isfinite(cost) or cost <= 0:
        return f"declares step_cost = {cost!r}, which is not a positive number (seconds per step, vanilla = 1.0)"
    if not isinstance(value.supports_masked_lm, bool):
        return f"declares supports_masked_lm = {value.supports_masked_lm!r}, which is not True or False"
    return None


def composed_step_cost(classes: list[type[Defence]]) -> float:
    """The step cost of running ``classes`` together: each part's extra passes on top of one vanilla step
    (the sum of their step costs minus one per part after the first)."""
    return sum(cls.step_cost for cls in classes) - (len(classes) - 1)


def check_composable(classes: list[type[Defence]], source: str) -> None:
    """Accept at most one objective defence plus at most one procedure defence."""
    roles = [c.role for c in classes]
    if "standalone" in roles or roles.count("objective") > 1 or roles.count("procedure") > 1 or len(classes) > 2:
        desc = ", ".join(f"{c.name} ({c.role})" for c in classes)
        raise ConfigError(f"{source}: defence.name: cannot compose {desc}; combine one objective defence "
                          f"(e.g. asa) with one embedding-perturbation defence (e.g. freelb)")


class ComposedDefence(Defence):
    """An objective defence run inside a procedure defence: every pass uses the objective's loss."""

    role = "standalone"

    def __init__(self, objective: Defence, procedure: Defence):
        super().__init__(None, objective.adapter)
        self.parts = (objective, procedure)
        self.name = f"{objective.name}+{procedure.name}"  # type: ignore[misc]
        procedure.objective = objective.objective
        self._procedure = procedure

    def trainable_modules(self) -> list[nn.Module]:
        return [m for part in self.parts for m in part.trainable_modules()]

    def attach(self) -> None:
        for part in self.parts:
            part.attach()

    def detach(self) -> None:
        for part in self.parts:
            part.detach()

    def save_extras(self, run_dir: Path) -> None:
        for part in self.parts:
            part.save_extras(run_dir)

    def on_epoch_start(self, start: EpochStart) -> None:
        for part in self.parts:
            part.on_epoch_start(start)

    def training_step(self, batch: Batch, backward: Backward) -> StepResult:
        return self._procedure.training_step(batch, backward)

    def epoch_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in self.parts:
            out.update(part.epoch_metrics())
        return out

    def log_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in self.parts:
            out.update(part.log_metrics())
        return out

    def state_dict(self) -> dict[str, Any]:
        return {part.name: part.state_dict() for part in self.parts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for part in self.parts:
            part.load_state_dict(state.get(part.name, {}))


def build_defence(names: list[str], params: dict[str, Any], adapter: BackboneAdapter, registry) -> Defence:
    """Instantiate the configured defence (composing two when a list is given)."""
    parts = [registry.get(n)(params[n], adapter) for n in names]
    if len(parts) == 1:
        return parts[0]
    objective = next(p for p in parts if p.role == "objective")
    procedure = next(p for p in parts if p.role == "procedure")
    return ComposedDefence(objective, procedure)
