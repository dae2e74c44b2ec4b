"""One built attack over one model copy (:class:`AttackSession`), and what it needs: the cache dir, the model
wrapper and the per-example seed.

Below both the runner (:mod:`asa_plugin.attacks.runner`, which attacks in this process or hands the examples to
workers) and the worker processes (:mod:`asa_plugin.attacks.workers`), so that neither imports the other back.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from asa_plugin.attacks import results as res


def example_seed(seed: int, index: int) -> int:
    """The RNG seed of example ``index``'s attack: independent of run order, shard and resume."""
    return (seed * 1_000_003 + index * 7_919 + 12_345) % (2**32)


def seed_everything(value: int) -> None:
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def resolve_cache_dir(job) -> Path:
    """Where ``job`` (an :class:`~asa_plugin.attacks.runner.AttackJob`) keeps TextAttack's cache and derived
    assets: its own cache_dir, else attack.cache_dir, else $TA_CACHE_DIR, else RUN/attack/.cache."""
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


class AttackSession:
    """A built attack over one model copy: attacks examples of a job one at a time."""

    def __init__(self, job, pm, wrapper=None):  # job: an asa_plugin.attacks.runner.AttackJob
        from asa_plugin.attacks.profiling import instrument
        from asa_plugin.attacks.recipes import build_attack
        from asa_plugin.attacks.textattack_env import import_textattack

        self.job = job
        cache_dir = resolve_cache_dir(job)
        import_textattack(cache_dir, allow_download=job.cfg.download)
        self.wrapper = wrapper if wrapper is not None else load_wrapper(job.model_path, job.cfg, job.max_length)
        self.attack, assets = build_attack(pm.recipes.get(job.recipe), self.wrapper, job.cfg, cache_dir,
                                           pairs=job.text_pairs is not None)
        if hasattr(self.attack.goal_function, "batch_size"):
            self.attack.goal_function.batch_size = job.cfg.batch_size
        self.assets = assets.report()
        self.clock = instrument(self.attack, self.wrapper)

    def attack_one(self, index: int) -> dict[str, Any]:
        from asa_plugin.attacks.recipes import pair_input, profile_query_budget
        from textattack.shared import AttackedText

        job = self.job
        text, gold = job.texts[index], int(job.labels[index])
        attacked = AttackedText(text if job.text_pairs is None else pair_input(text, job.text_pairs[index]))
        seed_everything(example_seed(job.cfg.seed, index))
        self.attack.clear_cache()
        columns = job.cfg.modify_columns
        budget = profile_query_budget(job.cfg.profile, res.modifiable_words(attacked, columns), job.cfg.query_budget)
        self.attack.goal_function.query_budget = budget
        self.clock.reset()
        start = time.perf_counter()
        result = self.attack.attack(attacked, gold)
        seconds = time.perf_counter() - start
        row = res.result_row(index, gold, result, seconds, budget, columns)
        row["timing"] = self.clock.row(seconds)
        return row
