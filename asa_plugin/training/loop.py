"""``advrobust train``: a short Accelerate loop; the defence supplies each step's loss."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from asa_plugin import interrupts
from asa_plugin.config import RunConfig, dump_toml
from asa_plugin.data import load_training_data
from asa_plugin.defences.base import Defence, EpochStart, build_defence
from asa_plugin.defences.perturbation import loss_scaler
from asa_plugin.errors import TrainingDiverged, UserError, writing
from asa_plugin.locks import run_lock
from asa_plugin.modelcard import write_model_card
from asa_plugin.outputs import match_umask
from asa_plugin.plugins import PluginManager, get_plugin_manager
from asa_plugin.preflight import check_resume, describe_job
from asa_plugin.threads import TRAIN_DEFAULT_THREADS, apply_threads, follow_thread_budget
from asa_plugin.training import checkpoint, degenerate
from asa_plugin.training.batching import EncodedDataset, make_loader, truncation_note
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

log = logging.getLogger("advrobust.train")
KILL_AT_STEP_ENV = "ADVROBUST_TEST_KILL_AT_STEP"
"""Test hook: SIGKILL the process right after this global step (simulates kill -9)."""


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
    from asa_plugin.config import tomllib

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
    from asa_plugin.preflight import check_model_dir

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
    pm = pm or get_plugin_manager(load_external=cfg.plugins.external, block=cfg.plugins.block)
    run_dir = prepare_run_dir(cfg, resume, task.name if task is not None else "train")
    if resume and (run_dir / "metrics.json").exists() and checkpoint.find(run_dir) is None:
        _check_finished_model(run_dir)
        return json.loads((run_dir / "metrics.json").read_text())  # already finished
    tc = cfg.train
    threads = apply_threads(tc.threads, TRAIN_DEFAULT_THREADS)
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
    task = task or Task()
    data = task.load_data(cfg, pm)  # validated before the model loads
    fingerprint = task.fingerprint(data)
    _check_same_data(task, cfg, checkpoint.find(run_dir) if resume else None, fingerprint)
    if accelerator.is_main_process:
        _setup_logging(run_dir)
        if not (resume and checkpoint.find(run_dir) is not None):  # a resumed run keeps its own
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
    optimizer = _optimizer(adapter.model, defence, tc)
    steps_per_epoch = math.ceil(local_batches(len(batches), accelerator.num_processes)
                                / tc.gradient_accumulation_steps)
    total_steps = tc.max_steps or steps_per_epoch * tc.epochs
    epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(tc.warmup_ratio * total_steps), total_steps)
    modules = TrainedModules(adapter.model, defence.trainable_modules())  # one DDP wrapper for both
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        modules, optimizer, train_loader, eval_loader, scheduler)
    adapter.runner = model  # every forward of a defence goes through the (DDP) wrapper

    state = {"epoch": 0, "batches_done": 0, "global_step": 0, "history": [], "train_seconds": 0.0,
             "train_cpu_seconds": 0.0, "examples_seen": 0, "num_processes": accelerator.num_processes,
             "data_sha256": fingerprint}
    found = checkpoint.find(run_dir) if resume else None
    if found is not None:
        saved_processes = checkpoint.read_state(found).get("num_processes", 1)
        if saved_processes != accelerator.num_processes:
            raise UserError(f"{run_dir}: the checkpoint was written by {saved_processes} process(es); "
                            f"resume it with the same number (this run has {accelerator.num_processes})")
        state = checkpoint.load(accelerator, found) | {"data_sha256": fingerprint}
        defence.load_state_dict(state.get("defence_state", {}))
        log.info("resumed from %s at step %d", found, state["global_step"])
        interrupts.record(True, f"the last checkpoint (step {state['global_step']}) is in {run_dir}")
    else:
        first = min(tc.checkpoint_every_steps or steps_per_epoch, steps_per_epoch)
        interrupts.record(False, f"no checkpoint written yet in {run_dir} (the first comes at step {first})")
    state.setdefault("step_history", [])
    state.setdefault("train_cpu_seconds", None)  # a checkpoint from before CPU time was recorded: unknown
    state.setdefault("thread_changes", [])
    if state["thread_changes"] and state["thread_changes"][-1]["threads"] != threads.threads:  # resumed
        state["thread_changes"].append({"step": state["global_step"], "threads": threads.threads})
    plan = describe_job(len(train_set), steps_per_epoch, total_steps, epochs, tc)
    log.info(plan)
    if truncation:
        log.info(truncation)
    if accelerator.is_local_main_process:
        print(f"[{task.name} {defence.name}] {plan}", file=sys.stderr, flush=True)
        if truncation:
            print(f"[{task.name} {defence.name}] {truncation}", file=sys.stderr, flush=True)

    kill_at = int(os.environ.get(KILL_AT_STEP_ENV, "0"))
    pending = PendingLosses()  # step losses not read yet (one sync per logged window, not per micro-batch)
    scaling = ExitStack()  # fp16: the defences' input gradients are taken at the loss scaler's scale
    scaling.enter_context(loss_scaler(accelerator.scaler))
    defence.attach()
    progress = tqdm(total=total_steps, initial=state["global_step"], desc=f"{task.name} {defence.name}",
                    disable=not (progress_bar and accelerator.is_local_main_process), dynamic_ncols=True)
    try:
        while state["epoch"] < epochs and state["global_step"] < total_steps:
            epoch = state["epoch"]
            batches.start_epoch(epoch)
            # A resumed epoch skips the batches this process already ran (after sharding, so every
            # process keeps the batches, and the padding of the last round, of an uninterrupted run).
            loader = (accelerator.skip_first_batches(train_loader, state["batches_done"])
                      if state["batches_done"] else train_loader)
            started, cpu_started = time.perf_counter(), time.process_time()
            # A defence's epoch work (A2T attacks the current model here), timed as training
            defence.on_epoch_start(EpochStart(epoch, cfg, run_dir, getattr(data, "train", None), len(train_loader),
                                              accelerator, pm, epochs))
            model.train()
            micro_losses: list[torch.Tensor] = []  # this step's, on the device: read when logged (losses.py)
            for batch in loader:
                lent = follow_thread_budget(threads)  # a core the bench's executor lends this cell (or takes back)
                if lent is not None:
                    state["thread_changes"].append({"step": state["global_step"], "threads": lent})
                    log.info("step %d: %d torch threads from here (bench.lend_idle_cores)", state["global_step"], lent)
                with accelerator.accumulate(model):
                    result = defence.training_step(batch, accelerator.backward)
                    micro_losses.append(loss_tensor(result.raw_loss, accelerator.device))  # no host sync
                    if accelerator.sync_gradients and tc.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(adapter.model.parameters(), tc.max_grad_norm)
                    step_lr = optimizer.param_groups[0]["lr"]  # the model's rate this step used
                    optimizer.step()
                    if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                        scheduler.step()
                    optimizer.zero_grad()
                state["batches_done"] += 1
                state["examples_seen"] += batch["input_ids"].shape[0] * accelerator.num_processes
                if accelerator.sync_gradients:
                    state["global_step"] += 1
                    progress.update(1)
                    pending.add(state["global_step"], epoch, micro_losses)  # the mean of the step's micro-batches
                    micro_losses.clear()
                    log_now = state["global_step"] % tc.log_every_steps == 0
                    save_now = bool(tc.checkpoint_every_steps) and state["global_step"] % tc.checkpoint_every_steps == 0
                    if log_now or save_now or state["global_step"] >= total_steps:
                        step_loss = _read_losses(pending, accelerator, run_dir, progress)  # every process, same step
                    if log_now:
                        logged = {"step": state["global_step"], "loss": step_loss, "lr": step_lr,
                                  **defence.log_metrics()}
                        log.info("step %d: %s", state["global_step"], json.dumps(logged))
                        state["step_history"].append(logged)
                    if save_now:
                        _add_time(state, started, cpu_started)
                        state["defence_state"] = defence.state_dict()
                        _save(accelerator, run_dir, state)
                        started, cpu_started = time.perf_counter(), time.process_time()
                    if kill_at and state["global_step"] == kill_at:
                        os.kill(os.getpid(), 9)
                    if state["global_step"] >= total_steps:
                        break
            _read_losses(pending, accelerator, run_dir, progress)  # the epoch's last steps, before eval and save
            _add_time(state, started, cpu_started)
            epoch_metrics = {"epoch": epoch + 1, "step": state["global_step"],
                             **task.evaluate(adapter, model, eval_loader, accelerator),
                             **defence.epoch_metrics()}
            log.info("epoch %d: %s", epoch + 1, json.dumps(epoch_metrics))
            if accelerator.is_local_main_process:
                progress.write(f"epoch {epoch + 1}: eval_accuracy {epoch_metrics['eval_accuracy']:.4f}")
            state["history"].append(epoch_metrics)
            state["epoch"], state["batches_done"] = epoch + 1, 0
            if accelerator.is_main_process:
                pm.on_epoch_end(run_dir=run_dir, epoch=epoch + 1, metrics=epoch_metrics)
            state["defence_state"] = defence.state_dict()
            _save(accelerator, run_dir, state)
    finally:
        progress.close()
        defence.detach()
        scaling.close()

    metrics = _final_metrics(cfg, defence, state)
    metrics["threads"] = threads.to_dict()
    if state["thread_changes"]:  # lent cores: the weights are not bitwise those of a 1-thread run
        metrics["threads"]["changes"] = state["thread_changes"]
    metrics.update(task.describe(data))
    if metrics["degenerate"] and accelerator.is_main_process:
        warning = f"the trained model is degenerate: {metrics['degenerate_reason']}; its accuracy under attack " \
                  f"would measure the constant prediction, not robustness (check train.lr and the defence's " \
                  f"strength, e.g. its epsilon)"
        log.warning(warning)
        print(f"advrobust train: warning: {warning}", file=sys.stderr, flush=True)
    if accelerator.is_main_process:
        with writing(run_dir / "model"):
            adapter.export(run_dir / "model")
        match_umask(run_dir / "model")  # safetensors are written 0600; give them the other outputs' mode
        with writing(run_dir):
            defence.save_extras(run_dir)
        with writing(run_dir / "metrics.json"):
            (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        with writing(run_dir / "model" / "README.md"):
            write_model_card(run_dir)  # run_dir/model/README.md; advrobust bench rewrites it after the attacks
        shutil.rmtree(run_dir / checkpoint.CHECKPOINT, ignore_errors=True)
        interrupts.record(True, f"training finished; the model is in {run_dir / 'model'}")
    accelerator.wait_for_everyone()
    return metrics


def _add_time(state: dict[str, Any], started: float, cpu_started: float) -> None:
    """Add the wall and CPU seconds since ``started``/``cpu_started`` to the run's training time. CPU
    seconds (``time.process_time``: every thread of this process, user and system) do not grow when other
    processes share the machine, so they compare runs of a loaded machine where wall seconds do not."""
    state["train_seconds"] += time.perf_counter() - started
    if state["train_cpu_seconds"] is not None:
        state["train_cpu_seconds"] += time.process_time() - cpu_started


def _save(accelerator, run_dir: Path, state: dict[str, Any]) -> None:
    checkpoint.save(accelerator, run_dir, state)
    if accelerator.is_main_process:
        match_umask(run_dir / checkpoint.CHECKPOINT)
    interrupts.record(True, f"the last checkpoint (step {state['global_step']}) is in {run_dir}")


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


def _final_metrics(cfg: RunConfig, defence: Defence, state: dict[str, Any]) -> dict[str, Any]:
    history = state["history"]
    metrics: dict[str, Any] = {
        "defence": defence.name,
        "backbone": cfg.model.backbone,
        "eval_accuracy": history[-1]["eval_accuracy"] if history else None,
        "eval_accuracy_per_epoch": [h["eval_accuracy"] for h in history],
        "epochs": len(history),
        "steps": state["global_step"],
        "train_examples": state["examples_seen"],
        "train_seconds": round(state["train_seconds"], 3),
        "train_cpu_seconds": None if state.get("train_cpu_seconds") is None else round(state["train_cpu_seconds"], 3),
        "train_examples_per_second": round(state["examples_seen"] / max(state["train_seconds"], 1e-9), 3),
        "history": history,
        "step_history": state.get("step_history", []),
    }
    for key in {k for h in history for k in h} - {"epoch", "step", "eval_accuracy"}:
        metrics[key] = history[-1].get(key)
    reason = degenerate.reason(history[-1]) if history else None
    metrics["degenerate"], metrics["degenerate_reason"] = reason is not None, reason
    return metrics
