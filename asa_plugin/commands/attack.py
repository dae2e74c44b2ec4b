"""``advrobust attack CONFIG`` or ``advrobust attack --model PATH --recipe NAME --dataset NAME ...``."""

from __future__ import annotations

import json
from pathlib import Path

from asa_plugin.attacks.jobs import resolve_model
from asa_plugin.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("attack", help="attack a trained model with TextAttack recipes",
                       description="Attack a model (a run dir of `advrobust train`, or a HF path/name) and "
                                   "write RUN/attack/<recipe>/{results.jsonl,summary.json}.")
    p.add_argument("config", nargs="?", help="TOML or YAML run config (its [attack], [data], [model] sections)")
    p.add_argument("--model", help="run dir of `advrobust train` (uses RUN/model) or a HF checkpoint path/name")
    p.add_argument("--recipe", action="append", default=[], metavar="NAME", help="recipe to run (repeatable)")
    p.add_argument("--dataset", help="registered dataset name (sst2, rotten_tomatoes, imdb, ag_news)")
    p.add_argument("--data-file", help="local TSV/CSV/JSONL/parquet file to attack")
    p.add_argument("--split", help="split to attack (default: dev)")
    p.add_argument("--num-examples", type=int, help="examples to attack (default: the profile's)")
    p.add_argument("--profile", choices=["stock", "textdefender"], help="recipe constraints")
    p.add_argument("--seed", type=int, help="seed of example selection and attacks")
    p.add_argument("--out", help="run dir receiving attack/<recipe>/ (default: the model's run dir)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set attack.nltk_data=/data/nltk (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run (same settings)")
    p.add_argument("--overwrite", action="store_true", help="discard earlier results of these recipes")
    p.add_argument("--shard", metavar="I/N", help="attack only shard I of N (0-based); merge with `advrobust merge`")
    p.add_argument("--workers", type=int, help="worker processes, each with its own model copy (default: one "
                                               "per GPU, else CPU cores / --threads)")
    p.add_argument("--threads", type=int, help="torch CPU threads per worker (default: $OMP_NUM_THREADS, else 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _raw_config(args) -> dict:
    raw: dict = {"attack": {}, "data": {}, "model": {}}
    if args.dataset:
        raw["data"]["dataset"] = args.dataset
    if args.data_file:
        raw["data"].update(dataset=None, train_file=args.data_file, dev_file=args.data_file,
                           test_file=args.data_file)
    for key, value in (("recipes", args.recipe or None), ("split", args.split), ("profile", args.profile),
                       ("num_examples", args.num_examples), ("seed", args.seed), ("model", args.model),
                       ("workers", getattr(args, "workers", None)), ("threads", getattr(args, "threads", None))):
        if value is not None:
            raw["attack"][key] = value
    return raw


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for section, values in extra.items():
        out[section] = {**(out.get(section) or {}), **{k: v for k, v in values.items() if v is not None
                                                       or k == "dataset"}}
    return out


def _local_num_labels(path: Path) -> int:
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return int(config.get("num_labels") or len(config.get("id2label") or {}) or 2)


def _hub_num_labels(checkpoint: str, model_arg: str) -> int:
    from transformers import AutoConfig

    from asa_plugin.adapters.loading import resolve_backbone

    try:
        return AutoConfig.from_pretrained(resolve_backbone(checkpoint)).num_labels
    except OSError as exc:
        raise UserError(f"--model {model_arg}: cannot load: {str(exc).splitlines()[0]}") from None


def _run_model_settings(model_arg: str) -> dict:
    """The [model] settings the run of ``--model RUN`` trained with (max_length): the model is attacked on
    what it saw in training unless ``--set model.max_length=N`` says otherwise. {} for a bare checkpoint."""
    from asa_plugin.config import read_file

    _, run_dir = resolve_model(model_arg)
    resolved = run_dir / "config.resolved.toml" if run_dir is not None else None
    if resolved is None or not resolved.is_file():
        return {}
    try:
        model = read_file(resolved).get("model") or {}
    except UserError:
        return {}
    return {"max_length": model["max_length"]} if isinstance(model.get("max_length"), int) else {}


def build_jobs(args):
    """The config (validated) and one AttackJob per recipe."""
    from asa_plugin.attacks.jobs import recipe_jobs
    from asa_plugin.attacks.runner import Shard
    from asa_plugin.checks import check_cache_dir, check_model_dir, check_writable, looks_local
    from asa_plugin.config import load_config, read_file

    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other: --resume continues earlier results, "
                        "--overwrite discards them; give one")
    if args.config is None and not args.model:
        raise UserError("give a CONFIG, or --model PATH with --recipe NAME and --dataset NAME or --data-file FILE")
    if args.config is None and not (args.dataset or args.data_file):
        raise UserError("--model needs --dataset NAME or --data-file FILE (or give a CONFIG)")
    raw = read_file(args.config) if args.config else {}
    raw = _merge(raw, _raw_config(args))
    model_arg = raw["attack"].get("model")
    if args.config is None:
        checkpoint, _ = resolve_model(model_arg)
        if looks_local(checkpoint):
            check_model_dir(checkpoint, "--model")
            num_labels = _local_num_labels(Path(checkpoint))  # no transformers import for a local model
        else:
            num_labels = _hub_num_labels(checkpoint, model_arg)
        raw["model"] = {"backbone": checkpoint, "num_labels": num_labels, **_run_model_settings(model_arg),
                        **raw["model"]}
    source = args.config or "command line"
    cfg = load_config(None, args.overrides, data=raw, source=source)
    cfg.source = source
    checkpoint, run_dir = resolve_model(cfg.attack.model or str(cfg.run_dir()))
    if args.config and cfg.attack.model is None and run_dir is None:
        raise UserError(f"{cfg.run_dir()} has no trained model (model/); train first with `advrobust train "
                        f"{args.config}`, or set attack.model / --model")
    if args.out:
        out = Path(args.out)
    elif run_dir is not None:
        out = run_dir
    elif args.config:
        out = cfg.run_dir()
    else:
        out = Path("runs") / f"attack-{Path(checkpoint.rstrip('/')).name}"
    if looks_local(checkpoint):
        check_model_dir(checkpoint, "--model" if args.model else "attack.model")
    check_writable(out, "attack output", "choose another with --out DIR")
    shard = Shard.parse(args.shard) if args.shard else None
    jobs = recipe_jobs(cfg, checkpoint, out, cfg.attack.recipes, shard=shard, resume=args.resume,
                       overwrite=args.overwrite, progress=not args.no_progress)
    if shard is not None and jobs and not shard.select(range(len(jobs[0].texts))):
        total = len(jobs[0].texts)
        raise UserError(f"--shard {args.shard}: shard {shard.index} of {shard.count} holds no example (there are "
                        f"{total}); use at most {total} shards, e.g. --shard 0/{total}")
    if jobs:
        from asa_plugin.attacks.session import resolve_cache_dir

        check_cache_dir(resolve_cache_dir(jobs[0]))
    if args.resume:
        from asa_plugin.attacks.results import check_indices, read_rows

        for job in jobs:  # a damaged results.jsonl is named now, not after the model has loaded
            path = job.out_dir / "results.jsonl"
            check_indices(path, read_rows(path), len(job.texts))
    return cfg, jobs


def degenerate_warning(checkpoint: str) -> str | None:
    """The warning for a model whose training run flagged it degenerate (None otherwise)."""
    _, run_dir = resolve_model(checkpoint)
    metrics_path = run_dir / "metrics.json" if run_dir is not None else None
    if metrics_path is None or not metrics_path.is_file():
        return None
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or not metrics.get("degenerate"):
        return None
    return (f"warning: {run_dir} was flagged degenerate at training ({metrics.get('degenerate_reason')}): "
            f"no attack can flip a constant prediction, so its accuracy under attack is not robustness")


def run(args) -> int:
    import sys

    from asa_plugin import interrupts
    from asa_plugin.attacks.runner import run_attack
    from asa_plugin.plugins import get_plugin_manager

    cfg, jobs = build_jobs(args)
    interrupts.record(True, "finished examples are kept in results.jsonl")
    interrupts.set_rerun("rerun the same command with --resume to continue")
    warning = degenerate_warning(jobs[0].model_path) if jobs else None
    if warning:
        print(f"advrobust attack: {warning}", file=sys.stderr, flush=True)
    pm = get_plugin_manager(load_external=cfg.plugins.external, block=cfg.plugins.block)
    for job in jobs:
        pm.recipes.get(job.recipe)  # unknown names fail before any work
    for job in jobs:
        summary = run_attack(job, pm)
        keys = ("recipe", "profile", "num_examples", "unperturbable", "clean_accuracy", "accuracy_under_attack",
                "attack_success_rate", "avg_words_perturbed_pct", "avg_queries", "seconds")
        print(json.dumps({"out": str(job.out_dir), **{k: summary[k] for k in keys}}))
        if summary.get("degenerate"):
            print(f"advrobust attack: warning: {job.recipe}: the attacked model is degenerate on these examples "
                  f"({summary['degenerate_reason']}); summary.json marks it: its accuracy under attack is not "
                  f"robustness", file=sys.stderr, flush=True)
    return 0
