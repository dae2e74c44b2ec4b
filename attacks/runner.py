"""Run one recipe over a list of examples: resumable, shardable, one JSONL row per example.

Layout: ``RUN/attack/<recipe>/`` holds ``run.json`` (the manifest), ``results.jsonl`` and
``summary.json``; shard ``i`` of ``n`` writes the same files under ``shards/<i>-of-<n>/`` and
``advrobust merge`` combines them. Each example's attack starts from fresh TextAttack caches and
RNGs seeded from (seed, example index), so its result does not depend on which examples ran
before it: a resumed run or a sharded run gives exactly the rows of one uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asa_plugin.attacks import results as res
from asa_plugin.attacks.session import (  # noqa: F401 - re-exported: their old import path
    AttackSession,
    example_seed,
    load_wrapper,
    resolve_cache_dir,
    seed_everything,
)

from asa_plugin.errors import UserError, start_over_hint, stderr_note
from asa_plugin.locks import run_lock

KILL_AFTER_ENV = "ADVROBUST_ATTACK_KILL_AFTER"
"""Test hook: SIGKILL this process after writing that many rows (simulates ``kill -9``)."""


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise UserError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. --shard 0/4") from None
        if not 0 <= i < n:
            raise UserError(f"--shard {text!r}: need 0 <= I < N (shards are numbered from 0)")
        return cls(i, n)

    def select(self, indices: Sequence[int]) -> list[int]:
        return [i for i in indices if i % self.count == self.index]

    @property
    def dirname(self) -> str:
        return f"{self.index}-of-{self.count}"


@dataclass
class AttackJob:
    """Everything one recipe run needs."""

    recipe: str
    cfg: Any  # AttackConfig
    model_path: str
    texts: list[str]
    labels: list[int]
    recipe_dir: Path  # RUN/attack/<recipe>
    data: str  # where the examples come from, for the manifest
    max_length: int | None = None
    text_pairs: list[str] | None = None
    """Second texts of a sentence-pair task (only ``cfg.modify_columns`` are attacked)."""
    shard: Shard | None = None
    resume: bool = False
    overwrite: bool = False
    cache_dir: Path | None = None
    progress: bool = True
    load_external: bool = True  # plugin manager options, for the worker processes
    block: tuple[str, ...] = ()

    @property
    def out_dir(self) -> Path:
        return self.recipe_dir / "shards" / self.shard.dirname if self.shard else self.recipe_dir

    def manifest(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"recipe": self.recipe, "profile": cfg.profile, "seed": cfg.seed, "split": cfg.split,
                "model": self.model_path, "data": self.data, "selection_size": len(self.texts),
                "query_budget": cfg.query_budget, "max_length": self.max_length,
                "modify_columns": list(cfg.modify_columns) if self.text_pairs else None,
                "shard": None if self.shard is None else [self.shard.index, self.shard.count],
                "model_sha256": weights_sha256(self.model_path)}


_HASHES: dict[tuple, str | None] = {}


def weights_sha256(model_path: str) -> str | None:
    """SHA-256 over a local model's weight files (by name, in name order), so a resume can tell that
    the weights at ``model_path`` were replaced; None for a hub name. Cached per file size and mtime."""
    import hashlib

    root = Path(model_path)
    if not root.is_dir():
        return None
    files = sorted(p for p in root.iterdir() if p.is_file() and (p.suffix in (".safetensors", ".bin")
                                                                  or p.name.endswith(".index.json")))
    key = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files) + (str(root.resolve()),)
    if key not in _HASHES:
        digest = hashlib.sha256()
        for p in files:
            digest.update(p.name.encode() + b"\0")
            with open(p, "rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
        _HASHES[key] = digest.hexdigest() if files else None
    return _HASHES[key]


def _prepare_out_dir(job: AttackJob) -> list[dict]:
    """Check the output dir against resume/overwrite and the manifest; return rows already done."""
    out = job.out_dir
    manifest_path, results_path = out / "run.json", out / "results.jsonl"
    manifest = job.manifest()
    if results_path.exists() or manifest_path.exists():
        if job.overwrite:
            for name in ("run.json", "results.jsonl", "summary.json"):
                (out / name).unlink(missing_ok=True)
        elif not job.resume:
            raise UserError(f"{out} already holds results; pass --resume to continue it or --overwrite "
                            f"to start again")
        else:
            old = res.read_json(manifest_path, "attack manifest") if manifest_path.exists() else {}
            if "model_sha256" not in old:  # recorded since issue 21: an older run.json lacks it
                old["model_sha256"] = manifest["model_sha256"]
            if old["model_sha256"] != manifest["model_sha256"]:
                raise UserError(f"--resume: the model's weights in {job.model_path} changed since {out} was "
                                f"started (sha256 {str(old['model_sha256'])[:12]}... -> "
                                f"{str(manifest['model_sha256'])[:12]}...): its rows and new ones would mix two "
                                f"models; restore those weights, or "
                                f"{start_over_hint(out, 'start again with --overwrite')}")
            changed = sorted(k for k in manifest if old.get(k) != manifest[k])
            if changed:
                raise UserError(f"--resume: {out} was started with different settings ({', '.join(changed)}); "
                                f"use the same settings, or {start_over_hint(out, '--overwrite')}")
    out.mkdir(parents=True, exist_ok=True)
    res.write_json(manifest_path, manifest)
    return res.read_rows(results_path, repair=True)


def run_attack(job: AttackJob, pm=None, wrapper=None) -> dict[str, Any]:
    """Attack the job's examples (those of its shard), append rows, write and return the summary.

    The examples still to do are spread over ``attack.workers`` processes (see
    :mod:`asa_plugin.attacks.workers`); a preloaded ``wrapper`` runs them all in this process.
    The output directory is locked meanwhile: a second attack of the same recipe (and shard) is refused.
    """
    if pm is None:
        from asa_plugin.plugins import get_plugin_manager

        pm = get_plugin_manager(load_external=job.load_external, block=job.block)
    pm.recipes.get(job.recipe)  # an unknown name fails before any work
    with run_lock(job.out_dir, f"advrobust attack, recipe {job.recipe}"
                  + (f", shard {job.shard.index}/{job.shard.count}" if job.shard else "")):
        return _run_attack(job, pm, wrapper)


def _run_attack(job: AttackJob, pm, wrapper) -> dict[str, Any]:
    from asa_plugin.attacks import workers as pool

    indices = list(range(len(job.texts)))
    if job.shard is not None:
        indices = job.shard.select(indices)
    done_rows = _prepare_out_dir(job)
    res.check_indices(job.out_dir / "results.jsonl", done_rows, len(job.texts))
    done = {r["index"] for r in done_rows}
    todo = [i for i in indices if i not in done]
    execution = pool.plan(job.cfg, len(todo), in_process=wrapper is not None)
    crowded = pool.oversubscription(execution)
    if crowded:
        stderr_note(crowded)
    sink = _RowSink(job, pm, len(indices), done_rows)
    try:
        if execution.workers == 1:
            assets = _run_here(job, pm, wrapper, todo, execution, sink)
        else:
            assets = pool.run_workers(job, todo, execution, sink)
    finally:
        sink.close()
    rows = sorted(sink.rows, key=lambda r: r["index"])
    if [r["index"] for r in sink.rows] != [r["index"] for r in rows]:  # workers finish out of order
        res.write_rows(job.out_dir / "results.jsonl", rows)  # index order, as one worker writes it
    if assets is None:  # nothing was left to attack: keep the assets of the run that did it
        path = job.out_dir / "assets.json"
        assets = res.read_json(path, "assets") if path.is_file() else []
    summary = res.summarize(rows, job.manifest(), assets, execution.to_dict())
    if job.shard is not None:
        summary["shard"] = [job.shard.index, job.shard.count]
    res.write_json(job.out_dir / "summary.json", summary)
    pm.on_report(job.out_dir, summary)
    return summary


def _run_here(job: AttackJob, pm, wrapper, todo: list[int], execution, sink: _RowSink) -> list[dict] | None:
    """Attack ``todo`` in this process (one worker); return the assets report."""
    from asa_plugin.threads import apply_threads

    if not todo:
        return None
    apply_threads(job.cfg.threads, execution.threads.threads)
    session = AttackSession(job, pm, wrapper)
    res.write_json(job.out_dir / "assets.json", session.assets)
    for index in todo:
        sink.add(session.attack_one(index))
    return session.assets


class _RowSink:
    """The parent's side of a run: appends each finished row to results.jsonl (crash-safe), calls the
    plugins' ``on_attack_result`` and moves the one progress bar (examples/min over all workers)."""

    def __init__(self, job: AttackJob, pm, total: int, done_rows: list[dict]):
        self.job, self.pm = job, pm
        self.rows = list(done_rows)
        self.writer = res.RowWriter(job.out_dir / "results.jsonl")
        self.run_dir = job.recipe_dir.parent.parent
        self.kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)
        self.written = 0
        self.start = time.perf_counter()
        self.bar = _progress(job, total, len(done_rows), self.rows)

    def add(self, row: dict[str, Any]) -> None:
        self.writer.write(row)
        self.rows.append(row)
        self.written += 1
        self.pm.on_attack_result(self.run_dir, self.job.recipe, row)
        if self.bar is not None:
            per_min = 60 * self.written / max(time.perf_counter() - self.start, 1e-9)
            self.bar.update(1)
            self.bar.set_postfix({**_running(self.rows), "ex/min": f"{per_min:.1f}"}, refresh=False)
        if self.kill_after and self.written >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def close(self) -> None:
        self.writer.close()
        if self.bar is not None:
            self.bar.close()


def _running(rows: list[dict]) -> dict[str, str]:
    n = sum(r["outcome"] != "unperturbable" for r in rows)
    held = sum(r["outcome"] in ("failed", "maximized") for r in rows)
    won = sum(r["outcome"] == "successful" for r in rows)
    decided = won + sum(r["outcome"] == "failed" for r in rows)
    return {"acc_under_attack": f"{held / n:.3f}" if n else "-",
            "success_rate": f"{won / decided:.3f}" if decided else "-"}


def _progress(job: AttackJob, total: int, initial: int, rows: list[dict]):
    if not job.progress:
        return None
    from tqdm.auto import tqdm

    label = job.recipe + (f" [{job.shard.dirname}]" if job.shard else "")
    bar = tqdm(total=total, initial=initial, desc=label, unit="ex", dynamic_ncols=True)
    bar.set_postfix(_running(rows), refresh=False)
    return bar
