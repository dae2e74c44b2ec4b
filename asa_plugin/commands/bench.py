"""``advrobust bench CONFIG [--set ...]``: the defence x attack grid and its report."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="train every defence, attack each with every recipe, write a report",
                       description="Train each defence of [bench] defences with each of [bench] seeds and the "
                                   "same budget, attack each model with each recipe, and write report.md, "
                                   "report.json and PNG plots into [bench] out_dir. Independent cells run in "
                                   "parallel (local processes or Ray tasks); finished cells are skipped, so "
                                   "rerunning resumes.")
    p.add_argument("config", help="TOML or YAML run config with a [bench] section")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set bench.out_dir=bench/try (repeatable)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (training and attacks; the per-cell lines remain)")
    p.add_argument("--only-defences", default=None, metavar="LABEL,...",
                   help="run only these defences now (the report still lists the whole grid)")
    p.add_argument("--only-recipes", default=None, metavar="NAME,...",
                   help="run only these recipes now (the report still lists the whole grid)")
    p.add_argument("--only-seeds", default=None, metavar="SEED,...",
                   help="train and attack only these of [bench] seeds now (the report still lists the whole grid)")
    p.add_argument("--executor", default=None, metavar="NAME",
                   help="how cells run, a registered executor (bench.executor): local processes (local, the "
                        "default), Ray tasks (ray), SLURM jobs through submitit (slurm), or a plugin's; "
                        "`advrobust plugins` lists them")
    p.add_argument("--max-parallel", type=int, default=None, metavar="N",
                   help="local: cells at once, 1 = one after another (bench.max_parallel; default: one per GPU, "
                        "else one per CPU core)")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="Ray cluster to join: auto or HOST:PORT (bench.ray_address; default: a local cluster)")
    p.add_argument("--lend-idle-cores", action="store_true", default=None,
                   help="local, CPU: give the cores no cell uses to the running training cells as extra threads "
                        "(bench.lend_idle_cores; the weights then differ from a 1-thread run's in the last bits)")
    p.set_defaults(run=run)


def flag_values(args) -> dict:
    """``--executor``/``--max-parallel``/``--ray-address``/``--lend-idle-cores`` as typed ``[bench]`` values."""
    pairs = (("executor", args.executor), ("max_parallel", args.max_parallel), ("ray_address", args.ray_address),
             ("lend_idle_cores", args.lend_idle_cores))
    return {key: value for key, value in pairs if value is not None}


def run(args) -> int:
    from asa_plugin import interrupts
    from asa_plugin.bench.cells import build_cells
    from asa_plugin.bench.checks import check_bench
    from asa_plugin.bench.grid import run_grid, say
    from asa_plugin.bench.plan import load_plan
    from asa_plugin.bench.report import write_report
    from asa_plugin.locks import run_locks, shared_lock
    from asa_plugin.modelcard import write_bench_cards
    from asa_plugin.plugins import get_plugin_manager

    plan = load_plan(args.config, args.overrides, flag_values(args))
    plugins = plan.cells[0].cfg.plugins
    pm = get_plugin_manager(load_external=plugins.external, block=plugins.block)
    only_defences = _names(args.only_defences, plan.labels, "--only-defences")
    only_recipes = _names(args.only_recipes, plan.recipes, "--only-recipes")
    only_seeds = _names(args.only_seeds, [str(s) for s in plan.seeds], "--only-seeds")
    seeds = None if only_seeds is None else [int(s) for s in only_seeds]

    def runs_now(cell) -> bool:
        return (only_defences is None or cell.label in only_defences) and (seeds is None or cell.seed in seeds)

    cells = build_cells(plan, only_defences, only_recipes, seeds, shards=plan.bench.shards)
    busy = {cell.run.name for cell in cells if not cell.done()}
    # One lock per training run this bench works on now: benches with disjoint cells share an out_dir.
    with run_locks(plan.out_dir, busy, f"advrobust bench {args.config}"):
        check_bench(plan, pm, runs_now)  # settings, outputs, data and every recipe's assets, before any training
        interrupts.set_rerun(f"rerun `advrobust bench {args.config}` to continue (finished cells are kept)")
        outcome = run_grid(plan, pm, progress=not args.no_progress, only_defences=only_defences,
                           only_recipes=only_recipes, only_seeds=seeds)
        with shared_lock(plan.out_dir, "report"):  # from what is on disk; the last bench to end sees every cell
            report = write_report(plan.out_dir, pm)
            write_bench_cards(plan.out_dir, report)  # each run's model card gains its attacks and comparisons
    say(f"report: {plan.out_dir / 'report.md'} ({len(report['missing'])} cells missing)")
    if outcome["failed"]:
        say(f"{len(outcome['failed'])} cells failed ({', '.join(outcome['failed'])}); their errors are in "
            f"{plan.out_dir / 'failures.json'} and report.md; fix the cause and rerun `advrobust bench "
            f"{args.config}` (only what is not done runs)")
        return 1
    return 0


def _names(text: str | None, allowed: list[str], flag: str) -> list[str] | None:
    """Comma-separated names, each one of ``allowed`` (one clear line otherwise)."""
    from asa_plugin.errors import UserError

    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise UserError(f"{flag}: unknown name '{unknown[0] if unknown else text}'; the grid has: {', '.join(allowed)}")
    return names
