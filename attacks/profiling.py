"""Where an attack's time goes: seconds in model queries, in each constraint, in transformations,
and the rest (search); plus model and sentence-encoder forward passes per example.

:func:`instrument` wraps the bound methods of one built ``textattack.Attack`` instance (its goal
function's model call, each constraint's ``call_many``, its uncached transformation), so nothing
in TextAttack's control flow changes. Pre-transformation constraints run inside the
transformation and count there.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

MODEL = "model_queries"
TRANSFORMATION = "transformation"
SEARCH = "search_and_other"
COUNTERS = ("model_forwards", "model_texts", "encoder_forwards", "encoder_texts")


class AttackClock:
    """Seconds per stage for the example being attacked; :meth:`reset` before each example."""

    def __init__(self, wrapper=None, encoders: list | None = None):
        self.wrapper = wrapper
        self.encoders = encoders or []
        self.seconds: dict[str, float] = defaultdict(float)
        self._start = (0, 0, 0, 0)

    def timed(self, key: str, fn: Callable) -> Callable:
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - start

        return run

    def _counters(self) -> tuple[int, int, int, int]:
        """(model forwards, texts through the model, encoder forwards, texts through the encoder)."""
        return (int(getattr(self.wrapper, "num_forwards", 0)), int(getattr(self.wrapper, "num_queries", 0)),
                sum(int(getattr(e, "num_forwards", 0)) for e in self.encoders),
                sum(int(getattr(e, "num_encoded", 0)) for e in self.encoders))

    def reset(self) -> None:
        self.seconds.clear()
        self._start = self._counters()

    def row(self, total: float) -> dict[str, Any]:
        """The ``timing`` field of a results row: stage seconds (summing to ``total``) and the
        forward passes and texts of the model and of the sentence encoder."""
        stages = {k: round(v, 4) for k, v in sorted(self.seconds.items())}
        stages[SEARCH] = round(max(total - sum(self.seconds.values()), 0.0), 4)
        counts = [now - then for now, then in zip(self._counters(), self._start)]
        return {"seconds": stages, **dict(zip(COUNTERS, counts))}


def constraint_key(constraint) -> str:
    return "constraint:" + type(constraint).__name__


def instrument(attack, wrapper=None) -> AttackClock:
    """Time ``attack``'s stages from now on; returns the clock to reset and read per example."""
    from textattack.constraints.semantics.sentence_encoders import SentenceEncoder

    encoders = [c for c in attack.constraints if isinstance(c, SentenceEncoder)]
    clock = AttackClock(wrapper, encoders)
    goal = attack.goal_function
    goal._call_model_uncached = clock.timed(MODEL, goal._call_model_uncached)
    for constraint in attack.constraints:
        constraint.call_many = clock.timed(constraint_key(constraint), constraint.call_many)
    attack._get_transformations_uncached = clock.timed(TRANSFORMATION, attack._get_transformations_uncached)
    return clock


def breakdown(rows: list[dict]) -> dict[str, Any] | None:
    """The summary's ``time_breakdown``: total seconds per stage and forwards per example, over the
    rows that carry timing (rows of runs before timing existed are left out)."""
    timed = [r["timing"] for r in rows if r.get("timing")]
    if not timed:
        return None
    seconds: dict[str, float] = defaultdict(float)
    for t in timed:
        for key, value in t["seconds"].items():
            seconds[key] += value
    total = sum(seconds.values())
    n = len(timed)
    return {
        "examples": n,
        "seconds": {k: round(v, 3) for k, v in sorted(seconds.items())},
        "fraction": {k: round(v / total, 4) if total else None for k, v in sorted(seconds.items())},
        **{f"{key}_per_example": sum(t.get(key, 0) for t in timed) / n for key in COUNTERS},
    }
