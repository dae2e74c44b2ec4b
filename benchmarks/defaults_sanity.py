"""Every built-in defence at its defaults trains a real classifier (issue 10's evidence).

Trains MiniLM on an SST-2 training subset (default: 8,000 examples, 1 epoch, seed 42, the
settings of the first bench) once per defence, every defence with its *default* parameters and
the same data, order and budget, and prints clean dev accuracy beside vanilla's, the degenerate
flag of metrics.json and ASA's final per-layer mask ratio. Target: none degenerate, each within 3
points of vanilla.

Each defence trains into ``WORKDIR/<label>/``; a finished one is reused, an interrupted one resumes,
so the script can be stopped and rerun. Results are (re)written to ``--out`` after each defence.

    python benchmarks/defaults_sanity.py --out benchmarks/results/defaults_sanity_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

DEFENCES = ["vanilla", "fgm", "pgd", "asa", "scal", "uscal", "freelb", "asa+freelb", "freelb++", "creat", "infobert",
            "tavat"]


def run_config(label: str, args, run_dir: Path):
    from asa_plugin.bench.plan import cell_defence
    from asa_plugin.config import load_config

    return load_config(data={
        "defence": cell_defence(label, {}),
        "model": {"backbone": args.backbone, "num_labels": 2, "max_length": 64},
        "data": {"dataset": "sst2", "max_train_examples": args.train_examples, "subset_seed": 0},
        "train": {"epochs": 1, "batch_size": 32, "lr": args.lr, "warmup_ratio": 0.1, "seed": args.seed,
                  "checkpoint_every_steps": 50},
        "output": {"run_dir": str(run_dir)},
    })


def train_one(label: str, args) -> dict:
    from asa_plugin.training.loop import train

    run_dir = Path(args.workdir) / label
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text())
    return train(run_config(label, args, run_dir), resume=True)


def row(label: str, metrics: dict, vanilla: float | None) -> dict:
    acc = metrics["eval_accuracy"]
    return {"defence": label, "eval_accuracy": acc,
            "delta_vs_vanilla_points": None if vanilla is None else round(100 * (acc - vanilla), 2),
            "degenerate": metrics.get("degenerate"), "degenerate_reason": metrics.get("degenerate_reason"),
            "asa_mask_ratio_per_layer": metrics.get("asa_mask_ratio_per_layer"),
            "train_seconds": metrics.get("train_seconds"), "steps": metrics.get("steps")}


def print_table(rows: list[dict]) -> None:
    print(f"{'defence':<12} {'dev acc %':>9} {'vs vanilla':>10} {'degenerate':>10}  ASA mask ratio per layer")
    for r in rows:
        delta = "" if r["delta_vs_vanilla_points"] is None else f"{r['delta_vs_vanilla_points']:+.1f}"
        ratios = r["asa_mask_ratio_per_layer"]
        masks = "" if not ratios else "/".join("-" if v is None else f"{v:.3f}" for v in ratios)
        print(f"{r['defence']:<12} {100 * r['eval_accuracy']:>9.1f} {delta:>10} {str(r['degenerate']):>10}  {masks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--defences", default=",".join(DEFENCES), help="comma-separated labels (a+b composes)")
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--train-examples", type=int, default=8000)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", default="bench-runs/defaults-sanity")
    parser.add_argument("--out", help="write the table as JSON here")
    args = parser.parse_args()
    labels = [d.strip() for d in args.defences.split(",") if d.strip()]
    if "vanilla" in labels:
        labels.remove("vanilla")
    labels.insert(0, "vanilla")  # the reference comes first
    rows: list[dict] = []
    vanilla = None
    for label in labels:
        metrics = train_one(label, args)
        if label == "vanilla":
            vanilla = metrics["eval_accuracy"]
        rows.append(row(label, metrics, vanilla))
        print_table(rows)
        if args.out:
            info = {"settings": {k: v for k, v in vars(args).items() if k not in ("out", "workdir")},
                    "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
                    "rows": rows}
            Path(args.out).write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
