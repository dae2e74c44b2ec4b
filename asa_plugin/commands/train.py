"""``advrobust train CONFIG [--set section.key=value ...] [--resume] [--no-progress]``."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a defended classifier from a config")
    p.add_argument("config", help="TOML or YAML run config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (train.log has every logged step)")
    p.set_defaults(run=run)


def run(args) -> int:
    from asa_plugin import interrupts
    from asa_plugin.checks import check_data_files, check_max_length, check_model_dir, check_writable, looks_local
    from asa_plugin.config import load_config
    from asa_plugin.training import checkpoint

    cfg = load_config(args.config, args.overrides)
    check_data_files(cfg.data, cfg.source)  # before transformers and the model load
    if looks_local(cfg.model.backbone):
        check_model_dir(cfg.model.backbone, f"{cfg.source}: model.backbone")
    check_max_length(cfg.model.backbone, cfg.model.max_length, f"{cfg.source}: model.max_length",
                     "use --set model.max_length={limit} or less")  # before any data is read or tokenized
    check_writable(cfg.run_dir(), "output.run_dir", "choose another with --set output.run_dir=...")
    interrupts.set_rerun(f"rerun with --resume to continue: advrobust train {args.config} ... --resume")
    found = checkpoint.find(cfg.run_dir()) if args.resume else None
    interrupts.record_checkpoint(cfg.run_dir(), found)  # until the loop knows better
    from asa_plugin.training.loop import train

    metrics = train(cfg, resume=args.resume, progress=not args.no_progress)
    summary = {k: metrics[k] for k in ("defence", "eval_accuracy", "steps", "train_seconds")}
    print(json.dumps({"run_dir": str(cfg.run_dir()), **summary}))
    return 0
