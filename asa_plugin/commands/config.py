"""``advrobust config [CONFIG] [--set ...]`` prints the resolved config; ``--reference`` documents every key."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("config", help="validate and print a resolved config, or the config reference")
    p.add_argument("config", nargs="?", help="TOML or YAML run config (omit for the defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--reference", action="store_true", help="print every section, key, default and meaning")
    p.set_defaults(run=run)


def reference() -> str:
    """Markdown tables of every config key, including each registered defence's parameters."""
    from asa_plugin.config import SECTIONS
    from asa_plugin.plugins import get_plugin_manager
    from asa_plugin.schema import describe

    def table(title: str, cls) -> list[str]:
        rows = [f"#### `{title}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        rows += [f"| `{k}` | {t.replace('|', 'or')} | `{d!r}` | {h} |" for k, t, d, h in describe(cls)]
        return [*rows, ""]

    lines: list[str] = []
    from asa_plugin.bench.plan import BenchSection

    for name in ("model", "data", "train", "attack", "output", "plugins"):
        lines += table(f"[{name}]", SECTIONS[name])
    lines += table("[bench] (advrobust bench only, see docs/bench.md)", BenchSection)
    from asa_plugin.bench.slurm_executor import SlurmSettings

    lines += table("[bench.slurm] (advrobust bench --executor slurm, see docs/bench.md)", SlurmSettings)
    from asa_plugin.pretraining.config import PretrainConfig

    lines += table("[pretrain] (advrobust pretrain only, see docs/asa.md#pre-training)", PretrainConfig)
    lines += ["#### `[defence]`", "", "`name` = a defence name, or a list of two to compose (e.g. "
              '`["asa", "freelb"]`, parameters then go in `[defence.asa]` / `[defence.freelb]`).', ""]
    pm = get_plugin_manager()
    for entry in pm.defences.entries():
        lines += table(f"[defence] name = \"{entry.name}\"", entry.value.Params)
    return "\n".join(lines)


def resolved(path: str | None, overrides: list[str]) -> dict:
    """The resolved values of a run config; of a pre-training config (it has ``[pretrain]``); or of a bench
    config (``[bench]``: the section plus the settings and defence parameters every cell gets)."""
    from asa_plugin.config import apply_overrides, load_config, read_file, toml_values

    sections = set(apply_overrides(read_file(path), overrides)) if path else set()
    if "bench" in sections:
        from asa_plugin.bench.plan import load_plan

        plan = load_plan(path, overrides)
        described = plan.describe()
        tables = {name: toml_values(settings) for name, settings in plan.bench.executor_settings.items()}
        return {"bench": {**toml_values(plan.bench), **tables}, **described["settings"],
                "defence": described["defence_params"]}
    if "pretrain" in sections:
        from asa_plugin.pretraining.config import load_pretrain_config

        return load_pretrain_config(path, overrides).to_dict()
    return load_config(path, overrides).to_dict()


def run(args) -> int:
    if args.reference:
        print(reference())
        return 0
    import tomli_w

    print(tomli_w.dumps(resolved(args.config, args.overrides)), end="")
    return 0
