"""Training throughput by torch intra-op thread count: the measurement behind `train.threads`'s default.

The raw training loop of ``train_throughput.py`` (same batches, same model) runs with each thread
count in turn, ``--repeats`` rounds interleaved so that load from other processes hits every setting
alike; the table reports median and worst examples/s per thread count.

    python benchmarks/train_threads.py --data ../shared/data/sst2/train.tsv --threads 1 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import raw_loop  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="TSV with sentence/label columns (e.g. SST-2 train)")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)

    from asa_plugin.adapters.loading import load_adapter
    from transformers import DataCollatorWithPadding

    from asa_plugin.config import DataConfig
    from asa_plugin.data import load_split
    from asa_plugin.training.batching import EncodedDataset, LengthGroupedBatches

    examples = load_split(DataConfig(dataset=None, train_file=args.data), "train", 2,
                          limit=args.steps * args.batch_size, seed=args.seed)
    tokenizer = load_adapter(args.backbone, 2).tokenizer
    dataset = EncodedDataset(examples, tokenizer, args.max_length)
    order = LengthGroupedBatches(dataset.lengths, args.batch_size, args.seed).batches()
    collate = DataCollatorWithPadding(tokenizer)
    runs: dict[int, list[float]] = {t: [] for t in args.threads}
    for r in range(args.repeats):
        for t in args.threads:
            torch.set_num_threads(t)
            runs[t].append(raw_loop(args.backbone, dataset, order, collate, 2e-5, args.seed))
            print(f"repeat {r + 1}: {t} thread(s) {runs[t][-1]:.2f} ex/s", file=sys.stderr)
    result = {
        "backbone": args.backbone, "batch_size": args.batch_size, "max_length": args.max_length,
        "steps": args.steps, "repeats": args.repeats, "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(), "machine": platform.platform(), "tmp": tempfile.gettempdir(),
        "threads": {str(t): {"median": statistics.median(v), "worst": min(v), "best": max(v), "all": v}
                    for t, v in runs.items()},
    }
    print("| threads | median ex/s | worst | best |\n|---|---|---|---|")
    for t, v in runs.items():
        print(f"| {t} | {statistics.median(v):.1f} | {min(v):.1f} | {max(v):.1f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
