"""``advrobust train``: a short Accelerate loop; the defence supplies each step's loss."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from asa_plugin import degenerate, interrupts
from asa_plugin.config import RunConfig, dump_toml
from asa_plugin.data import load_training_data
from asa_plugin.defences.base import Defence, EpochStart, build_defence
from asa_plugin.defences.perturbation import loss_scaler
from asa_plugin.errors import TrainingDiverged, UserError, writing
from asa_plugin.fileio import write_json_atomic
from asa_plugin.locks import run_lock
from asa_plugin.modelcard import write_model_card
from asa_plugin.outputs import match_umask
from asa_plugin.plugins import PluginManager, get_plugin_manager
from asa_plugin.threads import TRAIN_DEFAULT_THREADS, apply_threads, follow_thread_budget
from asa_plugin.training import checkpoint
from asa_plugin.training.banner import describe_job
from asa_plugin.training.batching import EncodedDataset, make_loader, truncation_note
from asa_plugin.training.callbacks import StepEnd, step_ended
from asa_plugin.training.distributed import (
    TrainedModules,
    check_compile,
    check_mixed_precision,
    check_parallelism,
    check_process_group,
    check_shared_run_dir,
    compiled,
    local_batches,
)
from asa_plugin.training.evaluate import evaluate
from asa_plugin.training.losses import PendingLosses, first_non_finite, loss_tensor
from asa_plugin.training.optim import build_optimizer
from asa_plugin.training.resume import check_resume
from asa_plugin.training.state import Stopwatch, TrainState

log = logging.getLogger("advrobust.train")


class Task:
    """What the loop trains: data, model and evaluation. This one is sequence classification;
    :mod:`asa_plugin.pretraining` supplies masked-LM pre-training through the same loop."""

    name = "train"

    def load_data(self, cfg: RunConfig, pm: PluginManager):
        """The training and eval data, validated before any model loads."""
        return load_training_data(cfg.data, cfg.model.num_labels, pm.datasets)

    def build(self, cfg: RunConfig, pm: PluginManager, data) -> tuple[Any, Any, Any, Any]:
        """(adapter, train dataset, eval dataset, collate factory (see ``make_loader``) or None)."""
        from asa_plugin.adapters.loading import load_adapter

        adapter = load_adapter(cfg.model.backbone, data.labels.num_labels, cfg.model.attn_implementation,
                               registry=pm.adapters)
        data.labels.apply_to(adapter.model.config)  # id2label/label2id travel with the exported checkpoint
        return (adapter, EncodedDataset(data.train, adapter.tokenizer, cfg.model.max_length),
                EncodedDataset(data.eval, adapter.tokenizer, cfg.model.max_length), None)

    def evaluate(self, adapter, model, loader, accelerator) -> dict[str, Any]:
        """One epoch's eval metrics; ``eval_accuracy`` is the headline figure."""
        return evaluate(adapter, model, loader, accelerator).metrics()

    def describe(self, data) -> dict[str, Any]:
        """Extra entries of metrics.json."""
        return {"labels": data.labels.describe()}

    def fingerprint(self, data) -> str:
        """sha256 of what is trained and evaluated on, recorded in each checkpoint: a resume on data
        edited since is refused (its batches would not continue the interrupted run's)."""
        return data_sha256([(e.text, e.text_pair, e.label) for e in (*data.train, *data.eval)])

    def data_name(self, cfg) -> str:
        """How the user names this task's data, in the message of a changed fingerprint."""
        return "the training data (data.*)"


def data_sha256(items: list) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()


def _check_same_data(task: Task, cfg: RunConfig, found: Path | None, fingerprint: str) -> None:
    """Refuse to resume checkpoint ``found`` on data other than it was trained on (checkpoints written
    before this check have no fingerprint and pass)."""
    if found is None:
        return
    saved = checkpoint.read_state(found).get("data_sha256")
    if saved is not None and saved != fingerprint:
        raise UserError(f"--resume: {task.data_name(cfg)} changed since {found.parent} was started (sha256 "
                        f"{saved[:12]}... -> {fingerprint[:12]}...): the resumed run would train on other texts "
                        f"than the interrupted one; restore the data, or train into another directory with "
                        f"--set output.run_dir=...")


def _setup_logging(run_dir: Path) -> None:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("advrobust")
    root.handlers = [h for h in root.handlers if not isinstance(h, logging.FileHandler)] + [handler]
    root.setLevel(logging.INFO)


def _optimizer(model: torch.nn.Module, defence: Defence, cfg) -> torch.optim.AdamW:
    """The shared optimizer (:func:`asa_plugin.training.optim.build_optimizer`) at ``cfg``'s lr and weight decay."""
    return build_optimizer(model, defence.trainable_modules(), cfg.lr, cfg.weight_decay)


def _check_run_kind(run_dir: Path, command: str) -> None:
    """A pre-training run is not continued by ``train``, nor a training run by ``pretrain``."""
    from asa_plugin.fileio import tomllib

    try:
        resolved = tomllib.loads((run_dir / "config.resolved.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # absent or damaged: check_resume says so when it matters
    was = "pretrain" if "pretrain" in resolved else "train"
    if was != command:
        kinds = {"pretrain": "a pre-training run (`advrobust pretrain`)", "train": "a training run (`advrobust train`)"}
        raise UserError(f"{run_dir} holds {kinds[was]}, not {kinds[command].split(' (')[0]}: continue it with "
                        f"`advrobust {was} CONFIG --resume`, or choose another directory with "
                        f"--set output.run_dir=...")


def _check_something_to_resume(run_dir: Path) -> None:
    """--resume on a directory with nothing to resume trains from scratch without a word: refused, or said."""
    for name in (checkpoint.CHECKPOINT, f"{checkpoint.CHECKPOINT}.old"):
        if (run_dir / name).is_dir() and checkpoint.find(run_dir) is None:
            raise UserError(f"--resume: {run_dir / name} has no {checkpoint.STATE_FILE}, so its step is unknown "
                            f"and resuming would restart at step 0; restore the file, or train into another "
                            f"directory with --set output.run_dir=...")
    if checkpoint.find(run_dir) is None and not (run_dir / "metrics.json").exists():
        print(f"advrobust: note: --resume: {run_dir} has no checkpoint yet (none was written before it stopped); "
              f"training starts at step 0", file=sys.stderr, flush=True)


def _check_finished_model(run_dir: Path) -> None:
    """A finished run given --resume returns its metrics: only if its exported model is whole."""
    from asa_plugin.checks import check_model_dir

    try:
        check_model_dir(run_dir / "model", "the finished model")
    except UserError as exc:
        detail = str(exc).removeprefix("the finished model ").split("; ")[0]
        raise UserError(f"--resume: {run_dir} finished, but its model is damaged: {detail}; restore it from a "
                        f"copy, or train again into another directory with --set output.run_dir=...") from None


def prepare_run_dir(cfg: RunConfig, resume: bool, command: str = "train") -> Path:
    run_dir = cfg.run_dir()
    if run_dir.exists():
        _check_run_kind(run_dir, command)
    if resume:
        _check_something_to_resume(run_dir)
    if run_dir.exists() and not resume:
        if (run_dir / "metrics.json").exists() or checkpoint.find(run_dir) is not None:
            raise UserError(f"run directory {run_dir} already holds a run; pass --resume to continue it, "
                            f"or choose another with --set output.run_dir=...")
    if resume and (checkpoint.find(run_dir) is not None or (run_dir / "metrics.json").exists()):
        check_resume(cfg, run_dir)  # one line naming the changed keys; config.resolved.toml untouched
        if (found := checkpoint.find(run_dir)) is not None:
            checkpoint.check_complete(found)  # before the model loads
    elif run_dir.exists():
        _refuse_orphan_results(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


RESULT_DIRS = ("model", "attack", "evaluate")
"""What a finished run leaves besides metrics.json: a new training would make them stale."""


def _is_result(path: Path, root: Path) -> bool:
    """A file under ``root`` that describes a model: not a cache or a lock (a dot-named file or folder, e.g.
    the attack assets a bench's pre-flight caches in ``attack/.cache`` before the run trains)."""
    return path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)


def _refuse_orphan_results(run_dir: Path) -> None:
    """A run directory whose metrics.json (and checkpoint) are gone but whose model or attack/evaluate
    results remain: training into it would leave those results describing another model."""
    found = [f"{name}/" for name in RESULT_DIRS
             if any(_is_result(p, run_dir / name) for p in (run_dir / name).rglob("*"))]
    if found:
        raise UserError(f"run directory {run_dir} holds {', '.join(found)} of an earlier run but no metrics.json "
                        f"or checkpoint; training into it would leave them describing another model: move them "
                        f"away, or choose another directory with --set output.run_dir=...")


def train(cfg: RunConfig, resume: bool = False, pm: PluginManager | None = None,
          task: Task | None = None, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg``'s defence on ``task`` (default: classification); return the metrics also written to
    ``run_dir/metrics.json``. ``progress``: a progress bar on stderr (train.log has the steps either way).

    The run directory is locked for the whole run (by the main process of a multi-process launch):
    a second ``train`` (or an ``attack``) of it is refused, naming this one."""
    main_process = os.environ.get("RANK", "0") == "0"  # set by accelerate launch / torchrun
    command = task.name if task is not None else "train"  # the holder named as the user typed it
    if resume and not cfg.run_dir().exists():  # before the lock creates it
        raise UserError(f"--resume: {cfg.run_dir()} does not exist, so there is nothing to resume (a mistyped "
                        f"output.run_dir?); give the run's directory, or drop --resume to start it")
    with run_lock(cfg.run_dir(), f"advrobust {command} {cfg.source}", enabled=main_process):
        return _train(cfg, resume, pm, task, progress)


def _train(cfg: RunConfig, resume: bool, pm: PluginManager | None, task: Task | None,
           progress_bar: bool) -> dict[str, Any]:
    """One training run, top to bottom: set up, restore (``--resume``), the epochs, finish."""
    pm = pm or get_plugin_manager(load_external=cfg.plugins.external, block=cfg.plugins.block)
    task = task or Task()
    run_dir = prepare_run_dir(cfg, resume, task.name)
    if resume and (run_dir / "metrics.json").exists() and checkpoint.find(run_dir) is None:
        _check_finished_model(run_dir)
        return json.loads((run_dir / "metrics.json").read_text())  # already finished
    run = _set_up(cfg, resume, pm, task, run_dir)
    state = _restore(run)
    _announce(run)
    pending = PendingLosses()  # step losses not read yet (one sync per logged window, not per micro-batch)
    with _attached(run, state, progress_bar) as progress:
        while state.epoch < run.epochs and state.global_step < run.total_steps:
            _one_epoch(run, state, progress, pending)
    return _finish(run, state)


# --- set up ------------------------------------------------------------------------------------------------
@dataclass
class TrainingRun:
    """What a run builds once, before its first step, and reads until its last."""

    cfg: RunConfig
    task: Task
    pm: PluginManager
    run_dir: Path
    accelerator: Accelerator
    threads: Any  # the thread setting (asa_plugin.threads.apply_threads), recorded in metrics.json
    data: Any  # the task's data, validated
    fingerprint: str  # sha256 of the data (Task.fingerprint)
    resume_from: Path | None  # the checkpoint to restore, None for a fresh start
    adapter: Any  # the backbone adapter; its ``runner`` is the prepared model
    defence: Defence
    train_size: int  # training examples
    truncation: str | None  # the note on texts cut at model.max_length, said once
    steps_per_epoch: int  # optimizer steps per epoch (per process, after accumulation)
    total_steps: int  # optimizer steps of the whole run (train.max_steps or epochs x steps_per_epoch)
    epochs: int
    batches: Any  # the training batch sampler (``start_epoch`` reshuffles deterministically)
    train_loader: Any  # the loaders; from _prepare on, as accelerator.prepare returned them
    eval_loader: Any
    model: Any = None  # set by _prepare: the model and the defence's modules in one (DDP) wrapper
    optimizer: Any = None  # set by _prepare
    scheduler: Any = None  # set by _prepare


def _set_up(cfg: RunConfig, resume: bool, pm: PluginManager, task: Task, run_dir: Path) -> TrainingRun:
    """Check the machine and the data, load the model, build the defence, the loaders and the schedule."""
    tc = cfg.train
    threads = apply_threads(tc.threads, TRAIN_DEFAULT_THREADS)
    accelerator = _accelerator(cfg, run_dir)
    data = task.load_data(cfg, pm)  # validated before the model loads
    fingerprint = task.fingerprint(data)
    found = checkpoint.find(run_dir) if resume else None
    _check_same_data(task, cfg, found, fingerprint)
    if accelerator.is_main_process:
        _setup_logging(run_dir)
        if found is None:  # a resumed run keeps its own
            dump_toml(cfg, run_dir / "config.resolved.toml")
    set_seed(tc.seed)

    adapter, train_set, eval_set, collate = task.build(cfg, pm, data)
    truncation = truncation_note(cfg.model.max_length, training=train_set, dev=eval_set)  # said once per run
    # train.batch_size is per process: an optimizer step sees batch_size x processes x accumulation.
    train_loader, batches = make_loader(train_set, adapter.tokenizer, tc.batch_size, tc.seed, shuffle=True,
                                        group_by_length=tc.group_by_length,
                                        short_batch_last=accelerator.num_processes > 1, collate_factory=collate)
    eval_loader, _ = make_loader(eval_set, adapter.tokenizer, tc.eval_batch_size, 0, shuffle=False,
                                 collate_factory=collate)
    defence = build_defence(cfg.defence.names, cfg.defence.params, adapter, pm.defences)
    steps_per_epoch = math.ceil(local_batches(len(batches), accelerator.num_processes)
                                / tc.gradient_accumulation_steps)
    total_steps = tc.max_steps or steps_per_epoch * tc.epochs
    run = TrainingRun(cfg=cfg, task=task, pm=pm, run_dir=run_dir, accelerator=accelerator, threads=threads,
                      data=data, fingerprint=fingerprint, resume_from=found, adapter=adapter, defence=defence,
                      train_size=len(train_set), truncation=truncation, steps_per_epoch=steps_per_epoch,
                      total_steps=total_steps, epochs=math.ceil(total_steps / steps_per_epoch), batches=batches,
                      train_loader=train_loader, eval_loader=eval_loader)
    _prepare(run)
    return run


def _accelerator(cfg: RunConfig, run_dir: Path) -> Accelerator:
    """Accelerate for this launch, after the checks of what it is asked to do (one line each)."""
    tc = cfg.train
    # The scheduler steps once per optimizer step (not once per process, Accelerate's default), so
    # train.max_steps and the warmup count optimizer steps whatever the number of processes.
    accelerator = Accelerator(mixed_precision=tc.mixed_precision,
                              gradient_accumulation_steps=tc.gradient_accumulation_steps,
                              step_scheduler_with_optimizer=False)
    check_mixed_precision(tc.mixed_precision, accelerator.device, cfg.source)
    check_process_group(accelerator.num_processes)
    check_parallelism(accelerator)  # DeepSpeed, FSDP: one line naming what is supported
    check_compile(compiled(accelerator), cfg.defence.names, fix=" (accelerate launch without --dynamo_backend)")
    check_shared_run_dir(accelerator, run_dir)  # several nodes: one run directory, seen by every rank
    return accelerator


def _prepare(run: TrainingRun) -> None:
    """The optimizer and the warmup schedule, then the model, the defence's modules, loaders and schedule
    prepared by Accelerate; every forward of the defence goes through the prepared (DDP) wrapper."""
    tc = run.cfg.train
    optimizer = _optimizer(run.adapter.model, run.defence, tc)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(tc.warmup_ratio * run.total_steps), run.total_steps)
    modules = TrainedModules(run.adapter.model, run.defence.trainable_modules())  # one DDP wrapper for both
    run.model, run.optimizer, run.train_loader, run.eval_loader, run.scheduler = run.accelerator.prepare(
        modules, optimizer, run.train_loader, run.eval_loader, scheduler)
    run.adapter.runner = run.model


# --- restore -----------------------------------------------------------------------------------------------
def _restore(run: TrainingRun) -> TrainState:
    """The state to start from: a fresh one, or the checkpoint's (weights, optimizer, scheduler and every
    process's RNG restored into the prepared objects, the defence's running state into the defence)."""
    accelerator, found = run.accelerator, run.resume_from
    if found is None:
        first = min(run.cfg.train.checkpoint_every_steps or run.steps_per_epoch, run.steps_per_epoch)
        interrupts.record(False, f"no checkpoint written yet in {run.run_dir} (the first comes at step {first})")
        return TrainState(num_processes=accelerator.num_processes, data_sha256=run.fingerprint)
    saved_processes = checkpoint.read_state(found).get("num_processes", 1)
    if saved_processes != accelerator.num_processes:
        raise UserError(f"{run.run_dir}: the checkpoint was written by {saved_processes} process(es); "
                        f"resume it with the same number (this run has {accelerator.num_processes})")
    state = TrainState.from_checkpoint(checkpoint.load(accelerator, found))
    state.data_sha256 = run.fingerprint
    run.defence.load_state_dict(state.defence_state)
    log.info("resumed from %s at step %d", found, state.global_step)
    interrupts.record(True, f"the last checkpoint (step {state.global_step}) is in {run.run_dir}")
    if state.thread_changes and state.thread_changes[-1]["threads"] != run.threads.threads:
        state.thread_changes.append({"step": state.global_step, "threads": run.threads.threads})
    return state


def _announce(run: TrainingRun) -> None:
    """What the run will do (and the truncation note), in train.log and on stderr."""
    plan = describe_job(run.train_size, run.steps_per_epoch, run.total_steps, run.epochs, run.cfg.train)
    lines = [plan] + ([run.truncation] if run.truncation else [])
    for line in lines:
        log.info(line)
    if run.accelerator.is_local_main_process:
        for line in lines:
            print(f"[{run.task.name} {run.defence.name}] {line}", file=sys.stderr, flush=True)


# --- one epoch ---------------------------------------------------------------------------------------------
@contextmanager
def _attached(run: TrainingRun, state: TrainState, show: bool) -> Iterator[tqdm]:
    """The defence attached to the model, its input gradients taken at fp16's loss scale, and the progress
    bar, while the epochs run; the model is a plain HF model again afterwards, whatever happened."""
    accelerator = run.accelerator
    with loss_scaler(accelerator.scaler):
        run.defence.attach()
        progress = tqdm(total=run.total_steps, initial=state.global_step, desc=f"{run.task.name} {run.defence.name}",
                        disable=not (show and accelerator.is_local_main_process), dynamic_ncols=True)
        try:
            yield progress
        finally:
            progress.close()
            run.defence.detach()


def _one_epoch(run: TrainingRun, state: TrainState, progress: tqdm, pending: PendingLosses) -> None:
    """The rest of epoch ``state.epoch`` (all of it unless resumed mid-epoch), then its evaluation and checkpoint."""
    accelerator = run.accelerator
    run.batches.start_epoch(state.epoch)
    # A resumed epoch skips the batches this process already ran (after sharding, so every
    # process keeps the batches, and the padding of the last round, of an uninterrupted run).
    loader = (accelerator.skip_first_batches(run.train_loader, state.batches_done)
              if state.batches_done else run.train_loader)
    watch = Stopwatch()
    # A defence's epoch work (A2T attacks the current model here), timed as training
    run.defence.on_epoch_start(EpochStart(state.epoch, run.cfg, run.run_dir, getattr(run.data, "train", None),
                                          len(run.train_loader), accelerator, run.pm, run.epochs))
    run.model.train()
    micro_losses: list[torch.Tensor] = []  # this step's, on the device: read when logged (losses.py)
    for batch in loader:
        _follow_threads(run, state)
        step_lr = _micro_step(run, batch, micro_losses)
        state.batches_done += 1
        state.examples_seen += batch["input_ids"].shape[0] * accelerator.num_processes
        if accelerator.sync_gradients:
            state.global_step += 1
            progress.update(1)
            pending.add(state.global_step, state.epoch, micro_losses)  # the mean of the step's micro-batches
            micro_losses.clear()
            _after_step(run, state, progress, pending, step_lr, watch)
            if state.global_step >= run.total_steps:
                break
    _read_losses(pending, accelerator, run.run_dir, progress)  # the epoch's last steps, before eval and save
    state.add_time(watch)
    _end_epoch(run, state, progress)


def _follow_threads(run: TrainingRun, state: TrainState) -> None:
    """Take a core the bench's executor lends this cell (or give one back), and record the change."""
    lent = follow_thread_budget(run.threads)
    if lent is not None:
        state.thread_changes.append({"step": state.global_step, "threads": lent})
        log.info("step %d: %d torch threads from here (bench.lend_idle_cores)", state.global_step, lent)


def _micro_step(run: TrainingRun, batch, micro_losses: list[torch.Tensor]) -> float:
    """One micro-batch: the defence's forward/backward passes; at an accumulation boundary the clipping, the
    optimizer's and the scheduler's steps. Returns the model's learning rate this step used."""
    accelerator, tc = run.accelerator, run.cfg.train
    with accelerator.accumulate(run.model):
        result = run.defence.training_step(batch, accelerator.backward)
        micro_losses.append(loss_tensor(result.raw_loss, accelerator.device))  # no host sync
        if accelerator.sync_gradients and tc.max_grad_norm > 0:
            accelerator.clip_grad_norm_(run.adapter.model.parameters(), tc.max_grad_norm)
        step_lr = run.optimizer.param_groups[0]["lr"]
        run.optimizer.step()
        if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
            run.scheduler.step()
        run.optimizer.zero_grad()
    return step_lr


def _after_step(run: TrainingRun, state: TrainState, progress: tqdm, pending: PendingLosses, step_lr: float,
                watch: Stopwatch) -> None:
    """After optimizer step ``state.global_step``: its loss read and logged, a checkpoint, when due; then the
    step callbacks (:mod:`asa_plugin.training.callbacks`)."""
    tc, step = run.cfg.train, state.global_step
    log_now = step % tc.log_every_steps == 0
    save_now = bool(tc.checkpoint_every_steps) and step % tc.checkpoint_every_steps == 0
    if log_now or save_now or step >= run.total_steps:
        step_loss = _read_losses(pending, run.accelerator, run.run_dir, progress)  # every process, same step
    if log_now:
        logged = {"step": step, "loss": step_loss, "lr": step_lr, **run.defence.log_metrics()}
        log.info("step %d: %s", step, json.dumps(logged))
        state.step_history.append(logged)
    if save_now:
        state.add_time(watch)
        _save(run, state)
        watch.restart()
    step_ended(StepEnd(run.run_dir, step, state.epoch, run.accelerator.process_index))


def _end_epoch(run: TrainingRun, state: TrainState, progress: tqdm) -> None:
    """The epoch's evaluation, its metrics in history, train.log and the plugins' hook; its checkpoint."""
    epoch = state.epoch
    metrics = {"epoch": epoch + 1, "step": state.global_step,
               **run.task.evaluate(run.adapter, run.model, run.eval_loader, run.accelerator),
               **run.defence.epoch_metrics()}
    log.info("epoch %d: %s", epoch + 1, json.dumps(metrics))
    if run.accelerator.is_local_main_process:
        progress.write(f"epoch {epoch + 1}: eval_accuracy {metrics['eval_accuracy']:.4f}")
    state.history.append(metrics)
    state.epoch, state.batches_done = epoch + 1, 0
    if run.accelerator.is_main_process:
        run.pm.on_epoch_end(run_dir=run.run_dir, epoch=epoch + 1, metrics=metrics)
    _save(run, state)


def _save(run: TrainingRun, state: TrainState) -> None:
    """A checkpoint of everything a resume needs, the defence's running state included."""
    state.defence_state = run.defence.state_dict()
    checkpoint.save(run.accelerator, run.run_dir, state.to_dict())
    if run.accelerator.is_main_process:
        match_umask(run.run_dir / checkpoint.CHECKPOINT)
    interrupts.record(True, f"the last checkpoint (step {state.global_step}) is in {run.run_dir}")


# --- finish ------------------------------------------------------------------------------------------------
def _finish(run: TrainingRun, state: TrainState) -> dict[str, Any]:
    """The run's metrics; on the main process the exported model, the defence's extras, metrics.json (which
    marks the run finished) and the model card, then the checkpoint is removed."""
    metrics = _final_metrics(run.cfg, run.defence, state)
    metrics["threads"] = run.threads.to_dict()
    if state.thread_changes:  # lent cores: the weights are not bitwise those of a 1-thread run
        metrics["threads"]["changes"] = state.thread_changes
    metrics.update(run.task.describe(run.data))
    if run.accelerator.is_main_process:
        if metrics["degenerate"]:
            _warn_degenerate(metrics["degenerate_reason"])
        _write_results(run, metrics)
    run.accelerator.wait_for_everyone()
    return metrics


def _warn_degenerate(reason: str) -> None:
    warning = (f"the trained model is degenerate: {reason}; its accuracy under attack would measure the constant "
               f"prediction, not robustness (check train.lr and the defence's strength, e.g. its epsilon)")
    log.warning(warning)
    print(f"advrobust train: warning: {warning}", file=sys.stderr, flush=True)


def _write_results(run: TrainingRun, metrics: dict[str, Any]) -> None:
    run_dir = run.run_dir
    with writing(run_dir / "model"):
        run.adapter.export(run_dir / "model")
    match_umask(run_dir / "model")  # safetensors are written 0600; give them the other outputs' mode
    with writing(run_dir):
        run.defence.save_extras(run_dir)
    with writing(run_dir / "metrics.json"):
        write_json_atomic(run_dir / "metrics.json", metrics)  # a kill mid-write leaves no torn "finished" mark
    with writing(run_dir / "model" / "README.md"):
        write_model_card(run_dir)  # run_dir/model/README.md; advrobust bench rewrites it after the attacks
    shutil.rmtree(run_dir / checkpoint.CHECKPOINT, ignore_errors=True)
    interrupts.record(True, f"training finished; the model is in {run_dir / 'model'}")


def _read_losses(pending: PendingLosses, accelerator, run_dir: Path, progress) -> float | None:
    """Read the pending step losses (one host sync, one all-reduce); the last one, or None if none was pending.

    A non-finite loss stops the run naming its step, before a checkpoint could keep its weights; every
    process reads the same means at the same step, so all of them stop together."""
    read = pending.read(accelerator)
    bad = first_non_finite(read)
    if bad is not None:
        raise TrainingDiverged(f"loss became {bad.loss} at step {bad.step} (epoch {bad.epoch + 1}); "
                               f"{_kept(run_dir)}; lower train.lr or check the data")
    if not read:
        return None
    progress.set_postfix(loss=f"{read[-1].loss:.4f}")
    return read[-1].loss


def _kept(run_dir: Path) -> str:
    """The truth about what a diverged run leaves behind."""
    found = checkpoint.find(run_dir)
    if found is None:
        return f"no checkpoint had been written yet, so nothing in {run_dir} can be resumed"
    step = json.loads((found / checkpoint.STATE_FILE).read_text())["global_step"]
    return f"the last good checkpoint (step {step}) is kept in {run_dir}"


def _final_metrics(cfg: RunConfig, defence: Defence, state: TrainState) -> dict[str, Any]:
    history = state.history
    metrics: dict[str, Any] = {
        "defence": defence.name,
        "backbone": cfg.model.backbone,
        "eval_accuracy": history[-1]["eval_accuracy"] if history else None,
        "eval_accuracy_per_epoch": [h["eval_accuracy"] for h in history],
        "epochs": len(history),
        "steps": state.global_step,
        "train_examples": state.examples_seen,
        "train_seconds": round(state.train_seconds, 3),
        "train_cpu_seconds": None if state.train_cpu_seconds is None else round(state.train_cpu_seconds, 3),
        "train_examples_per_second": round(state.examples_seen / max(state.train_seconds, 1e-9), 3),
        "history": history,
        "step_history": state.step_history,
    }
    for key in {k for h in history for k in h} - {"epoch", "step", "eval_accuracy"}:
        metrics[key] = history[-1].get(key)
    reason = degenerate.reason(history[-1]) if history else None
    metrics["degenerate"], metrics["degenerate_reason"] = reason is not None, reason
    return metrics
