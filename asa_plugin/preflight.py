"""Deprecated: the old home of the pre-flight checks, kept so that ``from asa_plugin.preflight import X`` works.

The module held four things and is split by what each is (docs/architecture.md):

- :mod:`asa_plugin.checks`: the cheap checks every layer may use (paths, model directories, max_length);
- :mod:`asa_plugin.training.resume`: the comparison of a resumed run's settings with those it started with;
- :mod:`asa_plugin.training.banner`: the line a training run prints before its first step;
- :mod:`asa_plugin.bench.checks` and :mod:`asa_plugin.attacks.warmup`: the bench pre-flight and recipe warm-up.

Each old name is looked up on first use (with a ``DeprecationWarning`` naming its new module), so importing this
module loads none of them and no layer below the commands imports it.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

MOVED = {
    **dict.fromkeys(("WEIGHT_FILES", "check_data_files", "check_writable", "check_cache_dir", "looks_local",
                     "check_model_dir", "check_safetensors", "PADDING_OFFSET_POSITIONS", "position_limit",
                     "backbone_config", "check_max_length"), "asa_plugin.checks"),
    **dict.fromkeys(("RESUME_IGNORED", "RESUME_IGNORED_SECTIONS", "changed_settings", "check_resume",
                     "without_execution_only"), "asa_plugin.training.resume"),
    "describe_job": "asa_plugin.training.banner",
    **dict.fromkeys(("BENCH_IGNORED", "check_bench_settings", "check_bench"), "asa_plugin.bench.checks"),
    "build_recipes": "asa_plugin.attacks.warmup",
}
"""Old name -> the module that holds it now."""


def __getattr__(name: str) -> Any:
    if name not in MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"asa_plugin.preflight.{name} moved to {MOVED[name]}.{name}; import it from there",
                  DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(MOVED[name]), name)


def __dir__() -> list[str]:
    return sorted(MOVED)
