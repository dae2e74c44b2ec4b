"""The ``[bench]`` config section and the run config of every cell of the grid.

A bench config is a normal run config plus ``[bench]``. Per-defence parameters live in
``[defence.<name>]`` tables; the label ``"asa+freelb"`` composes ``asa`` and ``freelb`` with
both tables. Cell ``label`` trains into ``OUT/runs/<label>/`` and its attacks go to that run's
``attack/<recipe>/``, exactly as ``advrobust train`` / ``advrobust attack`` would write them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asa_plugin.config import RunConfig, apply_overrides, load_config, read_file
from asa_plugin.errors import ConfigError, UserError
from asa_plugin.schema import build, option

BENCH_FILE = "bench.json"
"""Written into OUT by ``advrobust bench``: what the grid is, so ``advrobust report`` can rebuild it."""


@dataclass
class BenchSection:
    defences: list[str] = option(["vanilla"], help='defence labels: a name, or "a+b" for a composition')
    recipes: list[str] | None = option(None, help="attack recipes; default: the [attack] section's recipes")
    out_dir: str = option("bench", help="bench directory: runs/<label>/, report.md, report.json, plots")

    def __post_init__(self) -> None:
        if not self.defences:
            raise ValueError("bench.defences is empty; list at least one defence, e.g. [\"vanilla\", \"asa\"]")
        duplicates = sorted({d for d in self.defences if self.defences.count(d) > 1})
        if duplicates:
            raise ValueError(f"bench.defences lists '{duplicates[0]}' twice; list each defence once")
        if self.recipes is not None and not self.recipes:
            raise ValueError("bench.recipes is empty; list at least one recipe, e.g. [\"deepwordbug\"]")


@dataclass
class Cell:
    """One defence of the grid: its label, run config and run directory."""

    label: str
    cfg: RunConfig

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir()


@dataclass
class BenchPlan:
    source: str
    bench: BenchSection
    recipes: list[str]
    cells: list[Cell] = field(default_factory=list)

    @property
    def out_dir(self) -> Path:
        return Path(self.bench.out_dir)

    def describe(self) -> dict[str, Any]:
        """What ``bench.json`` records: the grid and the settings shared by every cell."""
        shared = self.cells[0].cfg.to_dict()
        shared.pop("defence")
        shared.pop("output")
        return {"source": self.source, "defences": list(self.bench.defences), "recipes": list(self.recipes),
                "defence_params": {c.label: c.cfg.defence.to_dict() for c in self.cells}, "settings": shared}


def split_label(label: str) -> list[str]:
    return [part.strip() for part in label.split("+")]


def _defence_tables(raw: Any, source: str, registry) -> dict[str, dict]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [defence] in a bench config holds only [defence.<name>] tables")
    for key, value in raw.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: defence.{key}: a bench config sets defences in [bench] defences and "
                              f"their parameters in [defence.<name>] tables, e.g. [defence.fgm]")
        if key not in registry:
            raise ConfigError(f"{source}: [defence.{key}]: unknown defence '{key}'; available: "
                              f"{', '.join(registry.names())}")
    return raw


def cell_defence(label: str, tables: dict[str, dict]) -> dict[str, Any]:
    """The ``[defence]`` section of cell ``label``."""
    names = split_label(label)
    if len(names) == 1:
        return {"name": names[0], **copy.deepcopy(tables.get(names[0], {}))}
    return {"name": names, **{n: copy.deepcopy(tables.get(n, {})) for n in names}}


def load_plan(path: str | Path, overrides: list[str] | None = None) -> BenchPlan:
    """Read a bench config, validate ``[bench]`` and build (and validate) every cell's run config."""
    from asa_plugin.plugins import get_plugin_manager

    source = str(path)
    raw = apply_overrides(read_file(path), overrides or [])
    bench = build(BenchSection, raw.pop("bench", None) or {}, section="bench", source=source)
    plugins = raw.get("plugins") or {}
    pm = get_plugin_manager(load_external=plugins.get("external", True), block=plugins.get("block", []))
    tables = _defence_tables(raw.pop("defence", None), source, pm.defences)
    for label in bench.defences:
        for name in split_label(label):
            if name not in pm.defences:
                raise ConfigError(f"{source}: bench.defences: unknown defence '{name}' in '{label}'; available: "
                                  f"{', '.join(pm.defences.names())}")
    attack = dict(raw.get("attack") or {})
    if bench.recipes is not None:
        attack["recipes"] = list(bench.recipes)
    raw["attack"] = attack
    out = Path(bench.out_dir)
    cells = []
    for label in bench.defences:
        data = {**copy.deepcopy(raw), "defence": cell_defence(label, tables),
                "output": {"run_dir": str(out / "runs" / label)}}
        try:
            cfg = load_config(None, data=data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: defence '{label}': {str(exc).removeprefix('<config>: ')}") from None
        cfg.source = source
        cells.append(Cell(label, cfg))
    return BenchPlan(source=source, bench=bench, recipes=list(cells[0].cfg.attack.recipes), cells=cells)


def read_bench_file(out_dir: str | Path) -> dict[str, Any]:
    """The ``bench.json`` of a bench directory (written by ``advrobust bench``)."""
    path = Path(out_dir) / BENCH_FILE
    if not path.is_file():
        raise UserError(f"{out_dir} has no {BENCH_FILE}: it is not a bench directory; run `advrobust bench "
                        f"CONFIG` first (its [bench] out_dir)")
    from asa_plugin.attacks.results import read_json

    info = read_json(path, BENCH_FILE)
    shape = {"defences": list, "recipes": list, "settings": dict}
    wrong = next((k for k, t in shape.items() if not isinstance(info, dict) or not isinstance(info.get(k), t)), None)
    if wrong is not None:
        raise UserError(f"{path}: not a bench file written by `advrobust bench` (no list/table '{wrong}'); "
                        f"rerun `advrobust bench CONFIG` to rewrite it")
    return info
