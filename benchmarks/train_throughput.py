"""Training-loop throughput: `advrobust train` (vanilla) vs a minimal raw PyTorch loop.

Both run the same model initialisation over the same batches (same examples, same length-grouped
order, same dynamic padding), alternating ``--repeats`` times in one process; the table reports
median examples/s and the ratio ours/raw (target >= 0.9).

    python benchmarks/train_throughput.py --data ../shared/data/sst2/train.tsv --steps 20 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def raw_loop(backbone: str, dataset, batch_order, collate, lr: float, seed: int) -> float:
    """The minimal loop: forward, cross-entropy, backward, clip, AdamW, linear schedule. Returns ex/s."""
    from asa_plugin.adapters.loading import load_adapter
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    model = load_adapter(backbone, 2).model
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, len(batch_order))
    examples = 0
    start = time.perf_counter()
    for indices in batch_order:
        batch = collate([dataset[i] for i in indices])
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch.get("token_type_ids"))
        loss = torch.nn.functional.cross_entropy(out.logits, batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        examples += len(indices)
    return examples / (time.perf_counter() - start)


def our_loop(backbone: str, data_file: Path, dev_file: Path, steps: int, batch_size: int, max_length: int,
             lr: float, seed: int, workdir: Path) -> float:
    from asa_plugin.config import load_config
    from asa_plugin.training.loop import train

    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    cfg = load_config(data={
        "model": {"backbone": backbone, "max_length": max_length},
        "data": {"train_file": str(data_file), "dev_file": str(dev_file)},
        "train": {"max_steps": steps, "batch_size": batch_size, "lr": lr, "warmup_ratio": 0.0, "seed": seed,
                  "log_every_steps": 10_000},
        "output": {"run_dir": str(run_dir / "run")},
    })
    return train(cfg)["train_examples_per_second"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="TSV with sentence/label columns (e.g. SST-2 train)")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--steps", type=int, default=20)
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

    workdir = Path(tempfile.mkdtemp(prefix="train-throughput-"))
    examples = load_split(DataConfig(dataset=None, train_file=args.data), "train", 2,
                          limit=args.steps * args.batch_size, seed=args.seed)
    subset = workdir / "train.tsv"
    subset.write_text("sentence\tlabel\n" + "".join(f"{e.text}\t{e.label}\n" for e in examples))
    dev = workdir / "dev.tsv"
    dev.write_text("sentence\tlabel\n" + "".join(f"{e.text}\t{e.label}\n" for e in examples[:32]))

    tokenizer = load_adapter(args.backbone, 2).tokenizer
    # The same examples in the same order as `advrobust train` builds them (from the written file).
    same = load_split(DataConfig(dataset=None, train_file=str(subset)), "train", 2)
    dataset = EncodedDataset(same, tokenizer, args.max_length)
    order = LengthGroupedBatches(dataset.lengths, args.batch_size, args.seed).batches()
    collate = DataCollatorWithPadding(tokenizer)

    ours, raw = [], []
    for r in range(args.repeats):
        raw.append(raw_loop(args.backbone, dataset, order, collate, 2e-5, args.seed))
        ours.append(our_loop(args.backbone, subset, dev, args.steps, args.batch_size, args.max_length, 2e-5,
                             args.seed, workdir))
        print(f"repeat {r + 1}: raw {raw[-1]:.2f} ex/s, advrobust {ours[-1]:.2f} ex/s", file=sys.stderr)
    result = {
        "backbone": args.backbone, "batch_size": args.batch_size, "max_length": args.max_length,
        "steps": args.steps, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu", "machine": platform.platform(),
        "raw_examples_per_second": statistics.median(raw), "ours_examples_per_second": statistics.median(ours),
        "raw_all": raw, "ours_all": ours,
    }
    result["ratio"] = result["ours_examples_per_second"] / result["raw_examples_per_second"]
    print(f"| loop | examples/s (median of {args.repeats}) |\n|---|---|\n"
          f"| raw PyTorch | {result['raw_examples_per_second']:.2f} |\n"
          f"| advrobust train | {result['ours_examples_per_second']:.2f} |\n"
          f"ratio advrobust/raw = {result['ratio']:.3f} (target >= 0.9)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
