"""Any advrobust defence inside a Hugging Face ``Trainer`` script: :class:`DefenceTrainer`.

    trainer = DefenceTrainer(model=model, args=args, train_dataset=..., processing_class=tokenizer,
                             defence={"name": "asa", "tau": 0.3})

The defence objects are the ones ``advrobust train`` builds (same registry, same parameter
validation, same adapter table, same optimizer builder), so a defence is implemented once:

* the adapter is picked from ``model.config.model_type`` in the plugin manager's adapter registry;
* the defence runs each training step through its own ``training_step(batch, backward)``: it may
  back-propagate several times (FGM, FreeLB) and its loss is scaled for gradient accumulation as
  Trainer scales its own (``loss / current_gradient_accumulation_steps``, through
  ``accelerator.backward``, which applies the fp16 loss scale);
* the defence's trainable modules (ASA's adversaries) join one AdamW with the model
  (:func:`asa_plugin.training.optim.build_optimizer`, the authors' adversary learning rate);
  they are not part of the model, so Trainer's clipping covers the model alone (as in
  ``advrobust train``), and under several processes their gradients are averaged over the
  processes before each optimizer step (what DDP does for the model);
* ``save_model`` writes the plain model (no adversary weights), the defence's own artifacts
  beside it (``asa_adversary.safetensors``) and a model card; every checkpoint also holds the
  defence modules and their running state, so ``resume_from_checkpoint`` continues exactly;
* the defence's metrics (ASA mask ratio per layer, its KL and CE terms, FGM/FreeLB adversarial
  loss) are averaged over each logging window and added to Trainer's training logs, where
  ``trainer.state.log_history`` and every reporting callback (TensorBoard, W&B, MLflow) see them.

Evaluation (``trainer.evaluate()``) is clean: the defence changes only training steps.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from asa_plugin.config import DefenceConfig, build_defence_config
from asa_plugin.defences.base import Defence, build_defence
from asa_plugin.defences.perturbation import loss_scaler
from asa_plugin.errors import ConfigError, UserError
from asa_plugin.modelcard import TASKS, CardFacts, write_card
from asa_plugin.plugins import PluginManager, get_plugin_manager
from asa_plugin.training.distributed import check_compile, check_parallelism, compiled
from asa_plugin.training.optim import build_optimizer

log = logging.getLogger("advrobust.hf")

DefenceSpec = str | Sequence[str] | Mapping[str, Any]
MODULES_FILE = "defence_modules.safetensors"
"""Checkpoint file: the defence's trainable modules (for resuming; the export has its own files)."""
STATE_FILE = "defence_state.json"
"""Checkpoint file: the defence's running state (metric counters) and the unlogged metric window."""
ADAMW_OPTIMS = ("adamw_torch", "adamw_torch_fused")
CARD_KEYS = ("datasets", "data_description", "eval_split", "backbone", "task", "attacks", "comparisons")
"""The keys of ``model_card=``: the :class:`CardFacts` fields the trainer cannot know itself."""


def defence_config(spec: DefenceSpec, registry, source: str = "DefenceTrainer(defence=...)") -> DefenceConfig:
    """The validated :class:`DefenceConfig` of ``spec``, exactly as a ``[defence]`` table gives it.

    ``"asa"``; ``{"name": "asa", "tau": 0.3}``; ``["asa", "freelb"]``; or
    ``{"name": ["asa", "freelb"], "asa": {"tau": 0.3}, "freelb": {"adv_steps": 3}}``.
    """
    if isinstance(spec, str):
        raw: dict[str, Any] = {"name": spec}
    elif isinstance(spec, Mapping):
        raw = dict(spec)
    elif isinstance(spec, Sequence):
        raw = {"name": list(spec)}
    else:
        raise ConfigError(f"{source}: defence must be a name, a list of names or a dict with a `name` key, "
                          f"got {spec!r}")
    return build_defence_config(raw, source, registry)


def _flatten(metrics: Mapping[str, Any]) -> dict[str, float | torch.Tensor]:
    """Scalars as they are (a 0-d tensor stays one, read when logged); a per-layer list ``key`` as
    ``key/layer_i`` (layers without a value left out)."""
    out: dict[str, float | torch.Tensor] = {}
    for key, value in metrics.items():
        if isinstance(value, (list, tuple)):
            out.update({f"{key}/layer_{i}": float(v) for i, v in enumerate(value) if v is not None})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, torch.Tensor) and value.numel() == 1:
            out[key] = value.detach().reshape(())
    return out


def check_card_keys(model_card: Mapping[str, Any]) -> dict[str, Any]:
    """``model_card`` as a dict, refused in one line when it has a key the card does not state."""
    unknown = sorted(set(model_card) - set(CARD_KEYS))
    if unknown:
        raise ValueError(f"DefenceTrainer(model_card=...): unknown key {unknown[0]!r}; valid keys: "
                         f"{', '.join(CARD_KEYS)}")
    if model_card.get("task", "text-classification") not in TASKS:
        raise ValueError(f"DefenceTrainer(model_card=...): task {model_card['task']!r} is not one of "
                         f"{', '.join(TASKS)}")
    return dict(model_card)


def _backbone_name(name_or_path: str) -> str:
    """A backbone alias (``minilm``) when ``name_or_path`` is the directory its offline package ships."""
    from asa_plugin.adapters.loading import ALIASES, resolve_backbone

    for alias in ALIASES:
        try:
            if Path(resolve_backbone(alias)) == Path(name_or_path):
                return alias
        except UserError:  # its offline package is not installed: not that alias
            continue
    return name_or_path


def _refuse_epoch_work(defence: Defence) -> None:
    """One line for a defence whose work happens at epoch starts (``Defence.on_epoch_start``, e.g. a2t's attacks),
    which Trainer never calls: it would train as vanilla."""
    for part in getattr(defence, "parts", (defence,)):
        if type(part).on_epoch_start is not Defence.on_epoch_start:
            raise ValueError(f"DefenceTrainer: defence {part.name} works at the start of each epoch (e.g. a2t "
                             f"attacks the model there), which Trainer does not call; train it with advrobust train")


class DefenceTrainer(Trainer):
    """``transformers.Trainer`` whose training steps run an advrobust defence.

    Args (besides Trainer's own):
        defence: a defence name, a list of two to compose (``["asa", "freelb"]``), or a dict with
            ``name`` and the defence's parameters (the keys of its ``[defence]`` table).
        plugin_manager: the registries to look the defence and the adapter up in (default: the
            process-wide one, with third-party plugins of entry-point group ``advrobust``).
        model_card: fields of :class:`asa_plugin.modelcard.CardFacts` the trainer cannot know
            (:data:`CARD_KEYS`), e.g. ``{"datasets": ["sst2"], "data_description": "SST-2 train, 4000 examples"}``.

    Refused in one line when built (each would be ignored or wrong): ``model_init`` (hyper-parameter
    search), ``compute_loss_func`` or a ``compute_loss`` override and ``label_smoothing_factor`` (the
    defence supplies the loss), an optimizer of one's own when the defence has trainable modules,
    ``fp16`` without a GPU, DeepSpeed, FSDP, ``torch_compile`` with ASA, an unknown ``model_card`` key.
    """

    def __init__(self, model: nn.Module | None = None, args=None, *trainer_args, defence: DefenceSpec = "vanilla",
                 plugin_manager: PluginManager | None = None, model_card: Mapping[str, Any] | None = None,
                 **trainer_kwargs):
        if model is None or trainer_kwargs.get("model_init") is not None:
            raise ValueError("DefenceTrainer needs a model (model_init is not supported)")
        if trainer_kwargs.get("compute_loss_func") is not None:
            raise ValueError("DefenceTrainer: the defence supplies the training loss; drop compute_loss_func")
        pm = plugin_manager or get_plugin_manager()
        self.model_card = check_card_keys(model_card or {})
        self._backbone = _backbone_name(getattr(model.config, "_name_or_path", "") or model.config.model_type)
        self.defence_config = defence_config(defence, pm.defences)
        tokenizer = trainer_kwargs.get("processing_class")
        from asa_plugin.adapters.loading import adapter_class_for

        adapter = adapter_class_for(model.config.model_type, pm.adapters)(model, tokenizer)
        # Built before Trainer's __init__ re-seeds: the adversaries draw their initial weights right
        # after the model, as in ``advrobust train`` (which builds the defence after loading the model).
        self.defence: Defence = build_defence(self.defence_config.names, self.defence_config.params, adapter,
                                              pm.defences)
        _refuse_epoch_work(self.defence)
        optimizers = trainer_kwargs.get("optimizers", (None, None))
        if optimizers[0] is not None and self.defence.trainable_modules():
            raise ValueError(f"DefenceTrainer: defence {self.defence.name} trains modules of its own, which a "
                             f"given optimizer would not update; leave optimizers unset")
        if args is not None:  # before Trainer builds its Accelerator (which may fail on them less clearly)
            check_parallelism(None, "DefenceTrainer", deepspeed=bool(args.deepspeed), fsdp=bool(args.fsdp))
            check_compile(args.torch_compile, self.defence_config.names, "DefenceTrainer", fix=" (torch_compile=False)")
        callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
        super().__init__(model, args, *trainer_args, callbacks=[*callbacks, _DefenceModulesCallback(self)],
                         **trainer_kwargs)
        self._refuse_what_would_be_ignored()
        # The defence's losses are means over each micro-batch: Trainer must scale them for gradient
        # accumulation itself (it would not with num_items_in_batch).
        self.model_accepts_loss_kwargs = False
        for module in self.defence.trainable_modules():
            module.to(self.args.device)
        self._window: dict[str, float] = {}
        self._window_steps = 0

    def _refuse_what_would_be_ignored(self) -> None:
        """One line for each setting the defence's training steps would not honour (checked at start)."""
        args = self.args
        check_parallelism(self.accelerator, "DefenceTrainer",
                          deepspeed=bool(args.deepspeed) or self.is_deepspeed_enabled,
                          fsdp=bool(args.fsdp) or self.is_fsdp_enabled)
        check_compile(args.torch_compile or compiled(self.accelerator), self.defence_config.names, "DefenceTrainer",
                      fix=" (torch_compile=False)")
        if self.use_apex:
            raise ValueError("DefenceTrainer: half_precision_backend='apex' is not supported (the defence "
                             "back-propagates through Accelerate's loss scaler); use half_precision_backend='auto'")
        if args.fp16 and self.accelerator.scaler is None:
            raise ValueError(f"DefenceTrainer: fp16=True on {args.device.type} would train in float32 (Accelerate "
                             f"autocasts fp16 and scales its loss on a GPU only); on CPU use bf16=True")
        if args.label_smoothing_factor:
            raise ValueError(f"DefenceTrainer: label_smoothing_factor={args.label_smoothing_factor} would be "
                             f"ignored (each defence computes its own cross-entropy); leave it at 0")
        if type(self).compute_loss is not Trainer.compute_loss:
            raise ValueError(f"DefenceTrainer: {type(self).__name__}.compute_loss would be ignored in training (the "
                             f"defence supplies each step's loss); remove it, or register a defence plugin "
                             f"with that loss (defence=its name)")

    # --- the defence's modules ------------------------------------------------------------
    def defence_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters of the defence's own modules (empty for most defences)."""
        return [p for m in self.defence.trainable_modules() for p in m.parameters() if p.requires_grad]

    def _defence_state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{i}.{k}": v.detach().cpu().contiguous()
                for i, m in enumerate(self.defence.trainable_modules()) for k, v in m.state_dict().items()}

    def create_optimizer(self):
        """The optimizer ``advrobust train`` builds, at ``args.learning_rate`` and ``args.weight_decay``."""
        if self.optimizer is None:
            if self.args.optim not in ADAMW_OPTIMS:
                log.warning("DefenceTrainer trains with AdamW (as advrobust train does); args.optim=%s is ignored",
                            self.args.optim)
            self.optimizer = build_optimizer(self.model, self.defence.trainable_modules(), self.args.learning_rate,
                                             self.args.weight_decay, betas=(self.args.adam_beta1, self.args.adam_beta2),
                                             eps=self.args.adam_epsilon)
        return self.optimizer

    # --- training -------------------------------------------------------------------------
    def train(self, *args, **kwargs):
        """Trainer's ``train`` with the defence attached (its hooks exist only while training)."""
        self.defence.attach()
        try:
            return super().train(*args, **kwargs)
        finally:
            self.defence.detach()

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        """One micro-batch of the defence's step; returns its loss, scaled as Trainer scales its own."""
        model.train()
        inputs = self._prepare_inputs(inputs)
        self.defence.adapter.runner = model  # every forward of the defence goes through the (DDP) wrapper
        scale = self.current_gradient_accumulation_steps

        def backward(loss: torch.Tensor) -> None:
            self.accelerator.backward(loss / scale)

        # CPU autocast under bf16, as Trainer's compute_loss; under fp16 the defences' input gradients
        # (PGD, SCAL, USCAL) are taken at the scale of Accelerate's loss scaler, as in ``advrobust train``.
        with self.compute_loss_context_manager(), loss_scaler(self.accelerator.scaler):
            result = self.defence.training_step(inputs, backward)
        if self.accelerator.sync_gradients:  # the step's last micro-batch: before Trainer unscales and clips
            _average_across_processes(self.defence_parameters(), self.accelerator.num_processes)
        for key, value in _flatten(result.raw_metrics).items():
            self._window[key] = self._window.get(key, 0.0) + value
        self._window_steps += 1
        return torch.as_tensor(result.raw_loss, device=self.args.device).detach() / scale  # no host sync

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's log; a training log (one with ``loss``) also gets the defence's metrics of the window."""
        if "loss" in logs:
            logs = {**logs, **self._defence_metrics()}
        super().log(logs, start_time)

    def _defence_metrics(self) -> dict[str, float]:
        """Mean of each step metric over the window and the processes, plus the defence's own log metrics.

        A collective call under several processes: Trainer logs on every process at the same step.
        """
        out = {}
        if self._window_steps:
            keys = sorted(self._window)
            sums = torch.tensor([float(self._window[k]) for k in keys] + [float(self._window_steps)],
                                dtype=torch.float64, device=self.args.device)  # (K + 1,)
            if self.accelerator.num_processes > 1:
                sums = self.accelerator.reduce(sums, reduction="sum")
            out = {k: round(v / sums[-1].item(), 6) for k, v in zip(keys, sums[:-1].tolist())}
        self._window, self._window_steps = {}, 0
        out.update(_flatten(self.defence.log_metrics()))
        return {k: v for k, v in out.items() if math.isfinite(v)}

    # --- saving and resuming --------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """The plain model (the defence's modules are not part of it), then the defence's artifacts beside it."""
        super()._save(output_dir, state_dict)
        folder = Path(output_dir or self.args.output_dir)
        self.defence.save_extras(folder)
        write_card(folder, self.card_facts())

    def create_model_card(self, language: str | None = None, license: str | None = None, tags=None,
                          **ignored) -> None:
        """``push_to_hub``'s card: the robustness card (merged with a README the user wrote), not Trainer's
        generic one, with ``language``, ``license`` and ``tags`` added to its metadata."""
        if not self.is_world_process_zero():
            return
        unused = sorted(k for k, v in ignored.items() if v is not None and k != "model_name")  # push_to_hub's own
        if unused:
            log.warning("DefenceTrainer.create_model_card: %s not used; the robustness card states its own model "
                        "and data (DefenceTrainer(model_card=...) sets them)", ", ".join(unused))
        tags = [tags] if isinstance(tags, str) else tags
        write_card(self.args.output_dir, self.card_facts(), {"language": language, "license": license, "tags": tags})

    def card_facts(self) -> CardFacts:
        """What the model card of a model saved now states (training budget and clean accuracy so far)."""
        args, state = self.args, self.state
        history = state.log_history
        accuracy = next((h["eval_accuracy"] for h in reversed(history) if "eval_accuracy" in h), None)
        runtime = next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), None)
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        training = {"steps": state.global_step, "epochs": round(state.epoch or 0.0, 4),
                    "train_examples": state.global_step * per_step,
                    "batch_size": args.per_device_train_batch_size,
                    "gradient_accumulation_steps": args.gradient_accumulation_steps, "processes": args.world_size,
                    "lr": args.learning_rate, "seed": args.seed,
                    "mixed_precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "no",
                    "train_seconds": runtime, "trainer": "asa_plugin.hf.DefenceTrainer"}
        params = {k: v for k, v in self.defence_config.to_dict().items() if k != "name"}
        facts = CardFacts(defence=self.defence.name, defence_params=params, backbone=self._backbone,
                          training={k: v for k, v in training.items() if v is not None},
                          clean_accuracy=accuracy, eval_split="eval")
        for key, value in self.model_card.items():
            setattr(facts, key, value)
        return facts

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's checkpoint plus the defence's modules and running state (written first: Trainer's
        ``trainer_state.json``, written last, marks a complete checkpoint)."""
        output_dir = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        window = {k: float(v) for k, v in self._window.items()}  # step metrics are device tensors until read
        state = {"defence": self.defence.state_dict(), "window": window, "window_steps": self._window_steps}
        if self.args.should_save:
            from safetensors.torch import save_file

            output_dir.mkdir(parents=True, exist_ok=True)
            save_file(self._defence_state_tensors(), str(output_dir / MODULES_FILE))
            (output_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        folder = Path(resume_from_checkpoint)
        if not (folder / STATE_FILE).is_file():
            raise ValueError(f"{folder} has no {STATE_FILE}: it was not written by a DefenceTrainer, so the "
                             f"defence's state cannot be restored")
        self._load_defence_modules(folder)
        state = json.loads((folder / STATE_FILE).read_text())
        self.defence.load_state_dict(state["defence"])
        self._window, self._window_steps = dict(state["window"]), int(state["window_steps"])


    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: the adversaries of the best checkpoint come back with its model."""
        super()._load_best_model()
        self._load_defence_modules(Path(self.state.best_model_checkpoint))

    def _load_defence_modules(self, folder: Path) -> None:
        if not self.defence.trainable_modules():
            return
        from safetensors.torch import load_file

        tensors = load_file(str(folder / MODULES_FILE))
        for i, module in enumerate(self.defence.trainable_modules()):
            prefix = f"{i}."
            module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})


def _average_across_processes(params: list[nn.Parameter], world: int) -> None:
    """DDP's mean of the gradients of ``params`` over ``world`` processes (nothing for one process).

    Called at the end of a step's last backward, while the gradients are still loss-scaled (fp16), as
    DDP reduces the model's: Trainer's unscaling then finds the same overflow on every process, so all
    of them take, or all skip, the step."""
    if world <= 1:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(world)


class _DefenceModulesCallback(TrainerCallback):
    """What DDP and ``model.zero_grad()`` do for the model, done for the defence's own modules.

    Trainer wraps and zeroes only ``trainer.model``; the defence's modules (called from inside the
    model's forward) are outside it. Start: every process takes process 0's weights. After each
    optimizer step: their gradients are zeroed. (Their mean over the processes is taken in
    ``training_step``, before Trainer unscales and clips.)
    """

    def __init__(self, trainer: DefenceTrainer):
        self.trainer = trainer

    def _distributed(self) -> bool:
        return self.trainer.accelerator.num_processes > 1

    def on_train_begin(self, args, state, control, **kwargs):
        if self._distributed():
            import torch.distributed as dist

            for p in self.trainer.defence_parameters():
                dist.broadcast(p.data, src=0)

    def on_optimizer_step(self, args, state, control, **kwargs):
        for p in self.trainer.defence_parameters():
            p.grad = None


__all__ = ["DefenceTrainer", "defence_config"]
