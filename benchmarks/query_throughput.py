"""Queries/s of our FastModelWrapper vs TextAttack's HuggingFaceModelWrapper, same model and
sentences, in one run, plus the largest difference in predicted probabilities.

    python benchmarks/query_throughput.py --data ../shared/data/sst2/dev.tsv --out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm", help="classifier checkpoint (default: MiniLM, offline package)")
    p.add_argument("--data", default=None, help="TSV with a sentence column (default: "
                                                "$ADVROBUST_DATA_DIR/sst2/dev.tsv)")
    p.add_argument("--limit", type=int, default=None, help="use the first N sentences (default: all)")
    p.add_argument("--query-batch", type=int, default=32, help="sentences per wrapper call (TextAttack's "
                                                               "default model batch size)")
    p.add_argument("--repeats", type=int, default=1, help="timed passes over the sentences per wrapper")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def sentences(args) -> list[str]:
    from asa_plugin.data.files import read_rows

    path = args.data or os.path.join(os.environ.get("ADVROBUST_DATA_DIR", "data"), "sst2", "dev.tsv")
    rows = read_rows(path)
    texts = [str(r["sentence"]) for r in rows]
    return texts[:args.limit] if args.limit else texts


def timed(wrapper, texts: list[str], query_batch: int, repeats: int):
    import torch

    wrapper(texts[:query_batch])  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        outs = [wrapper(texts[i:i + query_batch]) for i in range(0, len(texts), query_batch)]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    probs = torch.cat([torch.as_tensor(o).float().cpu() for o in outs]).softmax(-1)  # (N, C)
    return seconds, probs


def main(argv=None) -> int:
    args = parse_args(argv)
    from asa_plugin.attacks.textattack_env import import_textattack

    import_textattack(Path(tempfile.gettempdir()) / "advrobust-bench-cache")
    from asa_plugin.adapters.loading import load_adapter
    from asa_plugin.attacks.wrapper import FastModelWrapper, pick_device
    from textattack.models.wrappers import HuggingFaceModelWrapper

    adapter = load_adapter(args.model, num_labels=2)
    device = pick_device(args.device)
    model = adapter.model.to(device).eval()
    texts = sentences(args)
    ours = FastModelWrapper(model, adapter.tokenizer, batch_size=args.query_batch, device=device)
    stock = HuggingFaceModelWrapper(model, adapter.tokenizer)
    t_stock, p_stock = timed(stock, texts, args.query_batch, args.repeats)
    t_ours, p_ours = timed(ours, texts, args.query_batch, args.repeats)
    n = len(texts) * args.repeats
    result = {
        "model": args.model, "device": str(device), "sentences": len(texts), "repeats": args.repeats,
        "query_batch": args.query_batch, "torch_threads": __import__("torch").get_num_threads(),
        "stock_queries_per_s": n / t_stock, "ours_queries_per_s": n / t_ours,
        "speedup": t_stock / t_ours, "max_abs_prob_diff": float((p_ours - p_stock).abs().max()),
        "stock_padding": int(stock.tokenizer.model_max_length),
    }
    print(f"{'wrapper':<28}{'queries/s':>12}")
    print(f"{'TextAttack HF wrapper':<28}{result['stock_queries_per_s']:>12.1f}")
    print(f"{'asa FastModelWrapper':<28}{result['ours_queries_per_s']:>12.1f}")
    print(f"speedup {result['speedup']:.2f}x   max |p diff| {result['max_abs_prob_diff']:.2e}   "
          f"({len(texts)} sentences x {args.repeats}, {device})")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
