"""Run one recipe over a list of examples: resumable, shardable, one JSONL row per example.

Layout: ``RUN/attack/<recipe>/`` holds ``run.json`` (the manifest), ``results.jsonl`` and
``summary.json``; shard ``i`` of ``n`` writes the same files under ``shards/<i>-of-<n>/`` and
``advrobust merge`` combines them. Each example's attack starts from fresh TextAttack caches and
RNGs seeded from (seed, example index), so its result does not depend on which examples ran
before it: a resumed run or a sharded run gives exactly the rows of one uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from asa_plugin.attacks import results as res

from asa_plugin.errors import UserError

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

    @property
    def out_dir(self) -> Path:
        return self.recipe_dir / "shards" / self.shard.dirname if self.shard else self.recipe_dir

    def manifest(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"recipe": self.recipe, "profile": cfg.profile, "seed": cfg.seed, "split": cfg.split,
                "model": self.model_path, "data": self.data, "selection_size": len(self.texts),
                "query_budget": cfg.query_budget, "max_length": self.max_length,
                "modify_columns": list(cfg.modify_columns) if self.text_pairs else None,
                "shard": None if self.shard is None else [self.shard.index, self.shard.count]}


def example_seed(seed: int, index: int) -> int:
    """The RNG seed of example ``index``'s attack: independent of run order, shard and resume."""
    return (seed * 1_000_003 + index * 7_919 + 12_345) % (2**32)


def seed_everything(value: int) -> None:
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


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
            old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
            changed = sorted(k for k in manifest if old.get(k) != manifest[k])
            if changed:
                raise UserError(f"--resume: {out} was started with different settings ({', '.join(changed)}); "
                                f"use the same settings, or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    res.write_json(manifest_path, manifest)
    return res.read_rows(results_path, repair=True)


def resolve_cache_dir(job: AttackJob) -> Path:
    if job.cache_dir is not None:
        return Path(job.cache_dir)
    if job.cfg.cache_dir:
        return Path(job.cfg.cache_dir)
    if os.environ.get("TA_CACHE_DIR"):
        return Path(os.environ["TA_CACHE_DIR"])
    return job.recipe_dir.parent / ".cache"


def load_wrapper(model_path: str, cfg, max_length: int | None):
    """The fast wrapper over a freshly loaded model (no defence hooks)."""
    from asa_plugin.adapters.loading import load_adapter
    from asa_plugin.attacks.wrapper import FastModelWrapper

    adapter = load_adapter(model_path)
    return FastModelWrapper(adapter.model, adapter.tokenizer, batch_size=cfg.batch_size,
                            max_length=cfg.max_length or max_length, device=cfg.device)


def run_attack(job: AttackJob, pm=None, wrapper=None) -> dict[str, Any]:
    """Attack the job's examples (those of its shard), append rows, write and return the summary."""
    from asa_plugin.attacks.recipes import build_attack, profile_query_budget
    from asa_plugin.attacks.textattack_env import import_textattack

    if pm is None:
        from asa_plugin.plugins import get_plugin_manager

        pm = get_plugin_manager()
    recipe = pm.recipes.get(job.recipe)
    indices = list(range(len(job.texts)))
    if job.shard is not None:
        indices = job.shard.select(indices)
    done_rows = _prepare_out_dir(job)
    done = {r["index"] for r in done_rows}
    todo = [i for i in indices if i not in done]
    cache_dir = resolve_cache_dir(job)
    import_textattack(cache_dir, allow_download=job.cfg.download)
    if wrapper is None:
        wrapper = load_wrapper(job.model_path, job.cfg, job.max_length)
    attack, assets = build_attack(recipe, wrapper, job.cfg, cache_dir, pairs=job.text_pairs is not None)
    if hasattr(attack.goal_function, "batch_size"):
        attack.goal_function.batch_size = job.cfg.batch_size
    res.write_json(job.out_dir / "assets.json", assets.report())

    rows = list(done_rows)
    kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)
    bar = _progress(job, len(indices), len(done_rows), rows)
    writer = res.RowWriter(job.out_dir / "results.jsonl")
    run_dir = job.recipe_dir.parent.parent
    try:
        for written, index in enumerate(todo, start=1):
            row = _attack_one(attack, job, index, profile_query_budget)
            writer.write(row)
            rows.append(row)
            pm.on_attack_result(run_dir, job.recipe, row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(_running(rows), refresh=False)
            if kill_after and written >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    rows.sort(key=lambda r: r["index"])
    summary = res.summarize(rows, job.manifest(), assets.report())
    if job.shard is not None:
        summary["shard"] = [job.shard.index, job.shard.count]
    res.write_json(job.out_dir / "summary.json", summary)
    pm.on_report(job.out_dir, summary)
    return summary


def _attack_one(attack, job: AttackJob, index: int, budget_for) -> dict[str, Any]:
    from asa_plugin.attacks.recipes import pair_input
    from textattack.shared import AttackedText

    text, gold = job.texts[index], int(job.labels[index])
    attacked = AttackedText(text if job.text_pairs is None else pair_input(text, job.text_pairs[index]))
    seed_everything(example_seed(job.cfg.seed, index))
    attack.clear_cache()
    columns = job.cfg.modify_columns
    budget = budget_for(job.cfg.profile, res.modifiable_words(attacked, columns), job.cfg.query_budget)
    attack.goal_function.query_budget = budget
    start = time.perf_counter()
    result = attack.attack(attacked, gold)
    return res.result_row(index, gold, result, time.perf_counter() - start, budget, columns)


def _running(rows: list[dict]) -> dict[str, str]:
    n = len(rows)
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
