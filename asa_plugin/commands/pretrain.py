"""``advrobust pretrain CONFIG [--set section.key=value ...] [--resume] [--no-progress]``."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("pretrain", help="continue masked-LM pre-training of a backbone on a corpus, with a defence")
    p.add_argument("config", help="TOML or YAML config with a [pretrain] section (corpus, masking)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (train.log has every logged step)")
    p.set_defaults(run=run)


def run(args) -> int:
    from asa_plugin import interrupts
    from asa_plugin.checks import check_max_length, check_model_dir, check_writable, looks_local
    from asa_plugin.plugins import get_plugin_manager
    from asa_plugin.pretraining.config import load_pretrain_config
    from asa_plugin.training import checkpoint

    cfg = load_pretrain_config(args.config, args.overrides)
    pm = get_plugin_manager(load_external=cfg.plugins.external, block=cfg.plugins.block)
    from asa_plugin.pretraining.task import check_defences, pretrain

    check_defences(cfg, pm.defences)
    if looks_local(cfg.model.backbone):
        check_model_dir(cfg.model.backbone, f"{cfg.source}: model.backbone")
    check_max_length(cfg.model.backbone, cfg.model.max_length, f"{cfg.source}: model.max_length",
                     "use --set model.max_length={limit} or less")  # before any data is read or tokenized
    check_writable(cfg.run_dir(), "output.run_dir", "choose another with --set output.run_dir=...")
    interrupts.set_rerun(f"rerun with --resume to continue: advrobust pretrain {args.config} ... --resume")
    found = checkpoint.find(cfg.run_dir()) if args.resume else None
    interrupts.record_checkpoint(cfg.run_dir(), found)  # until the loop knows better
    metrics = pretrain(cfg, resume=args.resume, pm=pm, progress=not args.no_progress)
    summary = {k: metrics.get(k) for k in ("defence", "eval_mlm_loss", "eval_accuracy", "eval_perplexity", "steps",
                                           "train_seconds")}
    print(json.dumps({"run_dir": str(cfg.run_dir()), **summary}))
    return 0
