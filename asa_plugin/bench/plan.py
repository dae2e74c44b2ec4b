"""The ``[bench]`` config section and the run config of every cell of the grid.

A bench config is a normal run config plus ``[bench]``. Per-defence parameters live in
``[defence.<name>]`` tables; the label ``"asa+freelb"`` composes ``asa`` and ``freelb`` with
both tables. A variant (``[bench.variants.NAME]``: ``defence = "asa"`` and a table per defence,
e.g. ``asa = {tau = 0.3}``, merged over ``[defence.asa]``) is a label of its own, so one defence at
several settings (an ASA tau study) sits in the grid beside its defaults. A training cell is one
defence with one seed: seed ``seeds[0]`` trains into
``OUT/runs/<label>/``, any other seed ``s`` into ``OUT/runs/<label>.seed<s>/`` (``train.seed`` set
to the seed; the data subset and the attacked examples are the same for every seed). Its attacks
go to that run's ``attack/<recipe>/``, exactly as ``advrobust train`` / ``advrobust attack`` would
write them.
"""

from __future__ import annotations

import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asa_plugin.config import RunConfig, apply_overrides, load_config, read_file
from asa_plugin.defences import label_names
from asa_plugin.errors import ConfigError, UserError
from asa_plugin.schema import build, option
from asa_plugin.threads import SEED_MAX, SEED_WHY

BENCH_FILE = "bench.json"
"""Written into OUT by ``advrobust bench``: what the grid is, so ``advrobust report`` can rebuild it."""


@dataclass
class BenchSection:
    defences: list[str] = option(["vanilla"], help='defence labels: a name, or "a+b" for a composition')
    recipes: list[str] | None = option(None, help="attack recipes; default: the [attack] section's recipes")
    out_dir: str = option("bench", help="bench directory: runs/<label>/, report.md, report.json, plots")
    static_sets: list[str] = option([], help="static adversarial sets every trained model is evaluated on: "
                                             "FILE, or FILE#TASK for a key of AdvGLUE's dev.json")
    seeds: list[int] | None = option(None, help="training seeds; default: [train.seed]. seeds[0] trains into "
                                                "runs/<label>/, seed s into runs/<label>.seed<s>/")
    extra_seeds_defences: list[str] | None = option(None, help="defences trained with every seed (the others with "
                                                               "seeds[0] only); default: all")
    extra_seeds_recipes: list[str] | None = option(None, help="recipes attacked for the seeds after the first; "
                                                              "default: all")
    baseline: str | None = option(None, help="defence the others are compared with, paired on the same examples; "
                                             "default: vanilla when the grid has it")
    variants: dict[str, dict] = option({}, help='named defence settings, each a label of its own: '
                                                '[bench.variants.NAME] defence = "asa" and asa = {tau = 0.3} '
                                                '(merged over [defence.asa]); list NAME in bench.defences')
    backbones: list[str] = option([], help='named backbones as "NAME=PATH" (e.g. a model of advrobust pretrain); '
                                           'the label "DEFENCE@NAME" fine-tunes it instead of model.backbone')
    executor: str = option("local", help="how cells run, a registered executor: local (processes here), ray (Ray "
                                          "tasks; pip install 'asa-plugin[ray]'), slurm (SLURM jobs through "
                                          "submitit; pip install 'asa-plugin[slurm]', settings in [bench.slurm])")
    max_parallel: int | None = option(None, ge=1, help="local: cells at once (1 = one after another in the bench's "
                                                       "process; more than the CPU cores is clamped); default: one "
                                                       "per GPU, else one per CPU core")
    shards: int = option(1, ge=1, help="attack cells per (model, recipe), merged when all have finished")
    gpus_per_cell: float = option(0.0, ge=0.0, help="ray: GPUs each training and attack cell requests (a fraction "
                                                    "lets attack cells share a GPU)")
    ray_address: str | None = option(None, help="ray: cluster to join ('auto', or HOST:PORT); default: start a "
                                                "local one")
    ray_num_cpus: int | None = option(None, ge=1, help="ray, no address: CPUs of the local cluster the bench starts "
                                                       "(default: every core)")
    retries: int = option(2, ge=0, help="ray, slurm: retries of a cell whose worker or job died (the retry resumes)")
    lend_idle_cores: bool = option(False, help="local, CPU: lend the cores no cell uses to the running training "
                                               "cells as extra torch threads (faster; their weights then differ "
                                               "from a 1-thread run's in the last bits)")

    def __post_init__(self) -> None:
        self.executor_settings: dict[str, Any] = {}  # [bench.<name>] tables as settings dataclasses (load_plan)
        if not self.defences:
            raise ValueError("bench.defences is empty; list at least one defence, e.g. [\"vanilla\", \"asa\"]")
        for key in ("defences", "seeds", "extra_seeds_defences", "extra_seeds_recipes"):
            values = getattr(self, key) or []
            duplicates = sorted({str(v) for v in values if values.count(v) > 1})
            if duplicates:
                raise ValueError(f"bench.{key} lists '{duplicates[0]}' twice; list each once")
        if self.recipes is not None and not self.recipes:
            raise ValueError("bench.recipes is empty; list at least one recipe, e.g. [\"deepwordbug\"]")
        if self.seeds is not None and not self.seeds:
            raise ValueError("bench.seeds is empty; list at least one seed, e.g. [42, 43, 44]")
        bad = [s for s in self.seeds or [] if not 0 <= s <= SEED_MAX]
        if bad:
            raise ValueError(f"bench.seeds: {bad[0]} is not a seed ({SEED_WHY})")
        unknown = [d for d in self.extra_seeds_defences or [] if d not in self.defences]
        if unknown:
            raise ValueError(f"bench.extra_seeds_defences: '{unknown[0]}' is not in bench.defences "
                             f"({', '.join(self.defences)})")
        for entry in self.backbones:
            name, eq, path = entry.partition("=")
            if not eq or not name.strip() or not path.strip():
                raise ValueError(f"bench.backbones: '{entry}' is not NAME=PATH, e.g. \"asa-pre=runs/pretrain/model\"")
        for label in self.defences:
            name = label.partition("@")[2]
            if "@" in label and name not in self.backbone_paths():
                raise ValueError(f"bench.defences: '{label}' names backbone '{name}', which bench.backbones does not "
                                 f"define; add \"{name}=PATH\" to bench.backbones")
        for name, variant in self.variants.items():
            check_variant(name, variant)
        _check_labels(self.defences, self.variants)
        for label in self.defences:
            parts = split_label(label)
            composed = [p for p in parts if p in self.variants] if len(parts) > 1 else []
            if composed:
                raise ValueError(f"bench.defences: '{label}' composes variant '{composed[0]}'; compose inside a "
                                 f"variant instead (its defence = \"a+b\" and a table per defence)")
        self.check_executor_keys()
        if self.baseline is not None and self.baseline not in self.defences:
            raise ValueError(f"bench.baseline '{self.baseline}' is not in bench.defences ({', '.join(self.defences)})")

    def check_executor_keys(self) -> None:
        """Refuse, in one line, a key of one executor given to another (it would silently do nothing)."""
        if self.lend_idle_cores and self.executor != "local":
            raise ValueError(f"bench.lend_idle_cores applies to the local executor; {self.executor} gives each cell "
                             f"the CPUs it requests: remove it, or use --executor local")
        if self.max_parallel is not None and self.executor == "ray":
            raise ValueError("bench.max_parallel (--max-parallel) applies to the local executor; the CPUs of the "
                             "local Ray cluster are bench.ray_num_cpus (--set bench.ray_num_cpus=N)")
        for key in ("ray_address", "ray_num_cpus"):
            if getattr(self, key) is not None and self.executor != "ray":
                flag = " (--ray-address)" if key == "ray_address" else ""
                raise ValueError(f"bench.{key}{flag} applies to the ray executor, but bench.executor is "
                                 f"'{self.executor}': add --executor ray, or remove it")
        if self.ray_num_cpus is not None and self.ray_address is not None:
            raise ValueError("bench.ray_num_cpus sizes the local Ray cluster the bench starts; the cluster at "
                             "bench.ray_address has its own CPUs: remove one of them")

    def backbone_paths(self) -> dict[str, str]:
        """``backbones`` as NAME -> PATH."""
        pairs = [entry.partition("=") for entry in self.backbones]
        return {name.strip(): path.strip() for name, _, path in pairs}

    def baseline_label(self) -> str | None:
        """The defence compared with: ``baseline``, else ``vanilla`` when the grid has it, else None."""
        if self.baseline is not None:
            return self.baseline
        return "vanilla" if "vanilla" in self.defences else None


def _check_labels(labels: list[str], variants: dict[str, dict]) -> None:
    """Every label names a folder under ``runs/`` (no escape, no two labels for one composition)."""
    from asa_plugin.outputs import path_name_problem

    for where, name in [*(("bench.defences", label) for label in labels),
                        *(("bench.variants", name) for name in variants)]:
        problem = path_name_problem(name)
        if problem:
            raise ValueError(f"{where}: '{name}' cannot name a run directory under runs/ ({problem}); use a plain "
                             f"name such as \"asa-tau0.3\"")
    seen: dict[tuple, str] = {}
    for label in labels:
        base, at, backbone = label.partition("@")
        key = (frozenset(base.split("+")), backbone) if "+" in base else None
        if key is not None and key in seen:
            raise ValueError(f"bench.defences lists '{seen[key]}' and '{label}': one composition (the objective "
                             f"defence runs inside the perturbation defence's passes whatever the order), which "
                             f"would train twice; keep one")
        if key is not None:
            seen[key] = label


def run_name(label: str, seed: int, first_seed: int) -> str:
    """Run directory name under ``runs/``: ``<label>`` for the first seed, ``<label>.seed<s>`` otherwise."""
    return label if seed == first_seed else f"{label}.seed{seed}"


@dataclass
class TrainingRun:
    """One training run of the grid (a defence with one seed), its run config and the recipes attacking it.

    Not a cell: the grid's cells (:class:`asa_plugin.bench.cells.GridCell`) train, attack or evaluate one run."""

    label: str
    cfg: RunConfig
    seed: int = 0
    recipes: list[str] = field(default_factory=list)
    name: str = ""  # run directory name under runs/ (see run_name)

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir()


Cell = TrainingRun
"""The old name of :class:`TrainingRun` (kept for plugins and scripts that import it)."""


@dataclass
class BenchPlan:
    source: str
    bench: BenchSection
    recipes: list[str]
    cells: list[TrainingRun] = field(default_factory=list)  # the training runs (a name kept from before)

    seeds: list[int] = field(default_factory=list)

    @property
    def out_dir(self) -> Path:
        return Path(self.bench.out_dir)

    @property
    def labels(self) -> list[str]:
        return list(self.bench.defences)

    def describe(self) -> dict[str, Any]:
        """What ``bench.json`` records: the grid, its runs and the settings shared by every cell."""
        shared = self.cells[0].cfg.to_dict()
        shared.pop("defence")
        shared.pop("output")
        return {"source": self.source, "defences": self.labels, "recipes": list(self.recipes),
                "seeds": list(self.seeds), "baseline": self.bench.baseline_label(),
                "static_sets": list(self.bench.static_sets),
                "runs": [{"defence": c.label, "seed": c.seed, "run": c.name, "recipes": list(c.recipes)}
                         for c in self.cells],
                "defence_params": {c.label: c.cfg.defence.to_dict() for c in self.cells}, "settings": shared}


VARIANT_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_variant(name: str, variant: Any) -> None:
    """Raise ValueError (one line) unless ``variant`` is ``{defence = LABEL, <defence> = {params}, ...}``."""
    where = f"bench.variants.{name}"
    if not VARIANT_NAME.fullmatch(name):
        raise ValueError(f"{where}: a variant name is a run directory name: letters, digits, '_', '.', '-' "
                         f"(e.g. asa-tau0.3)")
    label = variant.get("defence") if isinstance(variant, dict) else None
    if not isinstance(label, str) or not label.strip() or "@" in label:
        raise ValueError(f"{where}: needs defence = \"NAME\" (or \"a+b\"), the defence it sets, e.g. "
                         f"defence = \"asa\"")
    names = split_label(label)
    for key, params in variant.items():
        if key == "defence":
            continue
        if key not in names:
            raise ValueError(f"{where}.{key}: '{key}' is not a defence of '{label}'; set its parameters in a "
                             f"table named after it, e.g. {names[0]} = {{...}}")
        if not isinstance(params, dict):
            raise ValueError(f"{where}.{key} must be a table of {key}'s parameters, e.g. {key} = {{tau = 0.3}}")


def base_label(label: str) -> str:
    """``label`` without its ``"@NAME"`` backbone suffix: a defence, a composition or a variant name."""
    return label.partition("@")[0].strip()


def split_label(label: str, variants: dict[str, dict] | None = None) -> list[str]:
    """The defence names of ``label`` (``"asa+freelb"``; a ``"@NAME"`` backbone suffix is not one; a
    variant stands for the defences of its ``defence``)."""
    base = base_label(label)
    if variants and base in variants:
        base = variants[base]["defence"]
    return label_names(base)


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


def cell_defence(label: str, tables: dict[str, dict], variants: dict[str, dict] | None = None) -> dict[str, Any]:
    """The ``[defence]`` section of cell ``label``: each defence's ``[defence.<name>]`` table, with a
    variant's own parameters over it."""
    names = split_label(label, variants)
    own = (variants or {}).get(base_label(label), {})
    params = {n: {**copy.deepcopy(tables.get(n, {})), **copy.deepcopy(own.get(n, {}))} for n in names}
    if len(names) == 1:
        return {"name": names[0], **params[names[0]]}
    return {"name": names, **params}


def load_plan(path: str | Path, overrides: list[str] | None = None, values: dict[str, Any] | None = None,
              pm=None) -> BenchPlan:
    """Read a bench config, validate ``[bench]`` and build (and validate) every cell's run config.

    ``overrides``: ``--set SECTION.KEY=VALUE`` strings; ``values``: typed ``[bench]`` values of the
    command's own flags (``--executor``, ``--max-parallel``...), over both; ``pm``: the plugin manager
    (default: the one of the config's ``[plugins]``)."""
    from asa_plugin.plugins import get_plugin_manager

    source = str(path)
    raw = apply_overrides(read_file(path), overrides or [])
    plugins = raw.get("plugins") or {}
    pm = pm or get_plugin_manager(load_external=plugins.get("external", True), block=plugins.get("block", []))
    bench = _bench_section(raw.pop("bench", None) or {}, values or {}, pm, source)
    tables = _defence_tables(raw.pop("defence", None), source, pm.defences)
    for label in bench.defences:
        for name in split_label(label, bench.variants):
            if name not in pm.defences:
                base = base_label(label)
                where = f"bench.variants.{base}" if base in bench.variants else "bench.defences"
                variants = f"; variants: {', '.join(bench.variants)}" if bench.variants else ""
                raise ConfigError(f"{source}: {where}: unknown defence '{name}' in '{label}'; available: "
                                  f"{', '.join(pm.defences.names())}{variants}")
    clash = next((v for v in bench.variants if v in pm.defences), None)
    if clash is not None:
        raise ConfigError(f"{source}: bench.variants.{clash}: '{clash}' is a defence's own name; give the variant "
                          f"another, e.g. {clash}-mine")
    listed = {base_label(label) for label in bench.defences}
    for name in (v for v in bench.variants if v not in listed):
        print(f"advrobust bench: warning: {source}: bench.variants.{name} is defined but not listed in "
              f"bench.defences, so no cell trains it; add \"{name}\" to bench.defences (--only-defences runs a "
              f"part of the grid), or remove the variant", file=sys.stderr, flush=True)
    attack = dict(raw.get("attack") or {})
    if bench.recipes is not None:
        attack["recipes"] = list(bench.recipes)
    raw["attack"] = attack
    out = Path(bench.out_dir)
    cells = []
    for label in bench.defences:
        data = {**copy.deepcopy(raw), "defence": cell_defence(label, tables, bench.variants),
                "output": {"run_dir": str(out / "runs" / label)}}
        if "@" in label:  # a pre-trained backbone (bench.backbones) instead of model.backbone
            data["model"] = {**data.get("model", {}), "backbone": bench.backbone_paths()[label.partition("@")[2]]}
        try:
            cfg = load_config(None, data=data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: defence '{label}': {str(exc).removeprefix('<config>: ')}") from None
        cfg.source = source
        cells.append(TrainingRun(label, cfg))
    recipes = list(cells[0].cfg.attack.recipes)
    seeds = bench.seeds or [cells[0].cfg.train.seed]
    unknown = [r for r in bench.extra_seeds_recipes or [] if r not in recipes]
    if unknown:
        raise ConfigError(f"{source}: bench.extra_seeds_recipes: '{unknown[0]}' is not a recipe of the grid "
                          f"({', '.join(recipes)})")
    return BenchPlan(source=source, bench=bench, recipes=recipes, seeds=seeds,
                     cells=[run for cell in cells for run in seed_runs(cell, bench, recipes, seeds, out)])


def _bench_section(raw: Any, values: dict[str, Any], pm, source: str) -> BenchSection:
    """``[bench]`` with the flags' ``values`` over it; each registered executor's ``[bench.<name>]`` table built
    as that executor's settings dataclass; ``bench.executor`` one of the registered executors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [bench] must be a table of keys, got {type(raw).__name__}")
    raw = {**raw, **values}
    tables = {k: raw.pop(k) for k in list(raw) if k in pm.executors and isinstance(raw[k], dict)}
    bench = build(BenchSection, raw, section="bench", source=source)
    if bench.executor not in pm.executors:
        raise ConfigError(f"{source}: bench.executor: unknown executor '{bench.executor}'; registered: "
                          f"{', '.join(pm.executors.names())} (advrobust plugins lists them)")
    for name, table in tables.items():
        settings = pm.executors.get(name).settings
        if settings is None:
            raise ConfigError(f"{source}: [bench.{name}]: the {name} executor takes no settings; remove the table")
        bench.executor_settings[name] = build(settings, table, section=f"bench.{name}", source=source)
    return bench


def seed_runs(cell: TrainingRun, bench: BenchSection, recipes: list[str], seeds: list[int],
              out: Path) -> list[TrainingRun]:
    """Run ``cell.label`` once per seed it trains with: seeds[0] attacked by every recipe, the
    others (only for ``extra_seeds_defences``) by ``extra_seeds_recipes``."""
    extra = bench.extra_seeds_defences is None or cell.label in bench.extra_seeds_defences
    runs = []
    for seed in seeds if extra else seeds[:1]:
        cfg = copy.deepcopy(cell.cfg)
        cfg.train.seed = seed
        name = run_name(cell.label, seed, seeds[0])
        cfg.output.run_dir = str(out / "runs" / name)
        mine = recipes if seed == seeds[0] else [r for r in recipes if bench.extra_seeds_recipes is None
                                                 or r in bench.extra_seeds_recipes]
        runs.append(TrainingRun(cell.label, cfg, seed=seed, recipes=mine, name=name))
    return runs


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


def grid_runs(info: dict) -> list[dict]:
    """The training runs of the grid, from bench.json (one per defence for a bench written before seeds)."""
    if info.get("runs"):
        return info["runs"]
    seed = info.get("settings", {}).get("train", {}).get("seed")
    return [{"defence": label, "seed": seed, "run": label, "recipes": list(info["recipes"])}
            for label in info["defences"]]
