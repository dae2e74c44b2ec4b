"""``advrobust evaluate RUN --data-file FILE [--task KEY]`` (or ``--dataset NAME --split SPLIT``).

Accuracy and per-example predictions of a trained model on a fixed (static) set, such as
AdvGLUE's ``dev.json`` (one list of records per task) or any local file. Writes
``RUN/evaluate/<name>/predictions.jsonl`` and ``summary.json``; prints the summary.
"""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy and predictions of a trained model on a static set",
                       description="Evaluate a model (a run dir of `advrobust train`, or a HF checkpoint path) on "
                                   "a fixed set, e.g. AdvGLUE's dev.json; writes RUN/evaluate/<name>/.")
    p.add_argument("model", metavar="RUN", help="run dir of `advrobust train` (uses RUN/model) or a checkpoint path")
    p.add_argument("--data-file", help="local file: TSV/CSV/JSONL/parquet, or JSON (AdvGLUE's per-task layout)")
    p.add_argument("--task", help="key of a per-task JSON file (sst2, qqp, mnli, mnli-mm, qnli, rte); default: "
                                  "the run's dataset, or the only key")
    p.add_argument("--dataset", help="registered dataset name instead of a file")
    p.add_argument("--split", default="dev", help="split of --dataset (default: dev)")
    p.add_argument("--name", help="output name under RUN/evaluate/ (default: from the file and task)")
    p.add_argument("--out", help="directory receiving evaluate/<name>/ (default: the run dir)")
    p.add_argument("--max-length", type=int, help="truncate inputs to this many tokens (default: the run's "
                                                   "model.max_length, else 512 or the backbone's position table)")
    p.add_argument("--batch-size", type=int, default=64, help="examples per forward pass")
    p.set_defaults(run=run)


def run(args) -> int:
    from asa_plugin.attacks.jobs import resolve_model
    from asa_plugin.errors import UserError
    from asa_plugin.static_sets import evaluate_static_set

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_length is not None and args.max_length < 1:
        raise UserError(f"--max-length must be >= 1, got {args.max_length}")
    from asa_plugin.checks import check_model_dir, check_writable, looks_local

    checkpoint, run_dir = resolve_model(args.model)
    if looks_local(checkpoint):
        check_model_dir(checkpoint, "RUN")
    out_root = Path(args.out) if args.out else (run_dir or Path("runs") / f"evaluate-{Path(checkpoint).name}")
    check_writable(out_root, "evaluate output", "choose another with --out DIR" if args.out else
                   "give a writable directory with --out DIR")
    summary, out = evaluate_static_set(checkpoint, run_dir, out_root, args.data_file, args.task, args.dataset,
                                       args.split, args.name, args.batch_size,
                                       max_length=args.max_length)
    print(json.dumps({"out": str(out), **summary}))
    return 0
