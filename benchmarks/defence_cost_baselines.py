"""Seconds per training step of the baseline defences relative to vanilla, measured in one run.

MiniLM (the ``minilm`` alias) by default, batch 32, length 64 (padded to exactly 64 tokens), on
the same batches for every defence. Steps are interleaved: in each round every defence runs one
full optimizer step (``training_step`` + AdamW step) on that round's batch, so drift in machine
load hits all of them alike. The model and optimizer are shared (weight values do not change
the cost of a step). Reports the median seconds per step and its ratio to vanilla.

By construction fgm is about 2x vanilla (two passes), pgd about K+1 and freelb about K times;
scal and uscal add representation and InfoNCE work to their 2 / 3 passes.

    python benchmarks/defence_cost_baselines.py --steps 5 --out defence_cost_baselines.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

# (label, defence name, parameters, forward/backward passes per step by construction)
DEFENCES = [
    ("vanilla", "vanilla", {}, 1),
    ("fgm", "fgm", {}, 2),
    ("pgd (K=3)", "pgd", {"adv_steps": 3}, 4),
    ("freelb (K=3)", "freelb", {"adv_steps": 3}, 3),
    ("freelb (K=5)", "freelb", {"adv_steps": 5}, 5),
    ("scal", "scal", {}, 2),
    ("uscal", "uscal", {}, 3),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="minilm", help="hub name, local path or alias")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=64, help="tokens per example (padded/truncated)")
    parser.add_argument("--steps", type=int, default=5, help="measured rounds (one step per defence each)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    parser.add_argument("--data", default=None,
                        help="TSV with a `sentence` column; default: $ADVROBUST_DATA_DIR/sst2/train.tsv "
                             "when it exists, else random token ids")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--only", nargs="*", default=None,
                        help="defence names to include (vanilla is always measured)")
    parser.add_argument("--out", default="defence_cost_baselines.json", help="JSON results path")
    return parser.parse_args(argv)


def sentences(path: str | None, needed: int) -> list[str] | None:
    if path is None and os.environ.get("ADVROBUST_DATA_DIR"):
        candidate = Path(os.environ["ADVROBUST_DATA_DIR"]) / "sst2" / "train.tsv"
        path = str(candidate) if candidate.exists() else None
    if path is None:
        return None
    import csv

    with open(path, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    texts = [r["sentence"] for r in rows][:needed]
    return texts if len(texts) == needed else None


def make_batches(tokenizer, args, count: int, device) -> list[dict[str, torch.Tensor]]:
    """``count`` batches of exactly (batch_size, length) tokens, identical for every defence."""
    n = args.batch_size * count
    texts = sentences(args.data, n)
    generator = torch.Generator().manual_seed(0)
    if texts is not None:
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=args.length,
                        return_tensors="pt")
    else:
        ids = torch.randint(1000, tokenizer.vocab_size, (n, args.length), generator=generator)
        enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
               "token_type_ids": torch.zeros_like(ids)}
    labels = torch.randint(0, 2, (n,), generator=generator)
    batches = []
    for i in range(count):
        part = slice(i * args.batch_size, (i + 1) * args.batch_size)
        batch = {k: v[part].to(device) for k, v in enc.items()}
        batch["labels"] = labels[part].to(device)
        batches.append(batch)
    return batches


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from asa_plugin.adapters.loading import load_adapter

    from asa_plugin.plugins import get_plugin_manager

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    pm = get_plugin_manager()
    torch.manual_seed(0)
    adapter = load_adapter(args.backbone, 2, registry=pm.adapters)
    adapter.model.to(device).train()
    optimizer = torch.optim.AdamW(adapter.model.parameters(), lr=1e-5)
    chosen = [d for d in DEFENCES if d[0] == "vanilla" or args.only is None or d[1] in args.only]
    defences = [(label, pm.defences.get(name)(pm.defences.get(name).Params(**params), adapter), passes)
                for label, name, params, passes in chosen]
    batches = make_batches(adapter.tokenizer, args, args.warmup + args.steps, device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {label: [] for label, _, _ in defences}
    for round_index, batch in enumerate(batches):
        for label, defence, _ in defences:
            sync()
            start = time.perf_counter()
            defence.training_step(batch, lambda loss: loss.backward())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            if round_index >= args.warmup:
                times[label].append(time.perf_counter() - start)

    base = statistics.median(times["vanilla"])
    rows = [{"defence": label, "passes": passes, "median_step_s": statistics.median(times[label]),
             "ratio_to_vanilla": statistics.median(times[label]) / base, "step_s": times[label]}
            for label, _, passes in defences]
    print(f"backbone {args.backbone}, batch {args.batch_size}, length {args.length}, device {device}, "
          f"{args.steps} measured rounds (+{args.warmup} warmup), interleaved")
    print(f"{'defence':<14} {'passes':>6} {'s/step':>9} {'x vanilla':>10}")
    for row in rows:
        print(f"{row['defence']:<14} {row['passes']:>6} {row['median_step_s']:>9.3f} "
              f"{row['ratio_to_vanilla']:>10.2f}")
    device_name = (torch.cuda.get_device_name() if device.type == "cuda"
                   else platform.processor() or platform.machine())
    result = {"backbone": args.backbone, "batch_size": args.batch_size, "length": args.length,
              "device": str(device), "device_name": device_name, "torch_threads": torch.get_num_threads(),
              "steps": args.steps, "warmup": args.warmup,
              "data": "sentences from a TSV" if sentences(args.data, 1) else "random token ids", "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
