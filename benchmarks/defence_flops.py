"""Matrix-product FLOPs of one training step of each defence, relative to vanilla (no timing).

The arithmetic floor beside ``defence_cost.py``'s measured seconds: torch's ``FlopCounterMode`` counts
the FLOPs of the matrix products (``mm``, ``addmm``, ``bmm``, attention) of one step of every row of
``defence_cost.DEFENCES`` on the same batch. Deterministic and independent of machine load, so it can
run on a busy machine; elementwise work (dropout, softmax, norms, the optimizer) is not counted, so a
measured ratio above this one is that work. ``tests/test_asa_cost.py`` checks ASA's count against its formula.

    python benchmarks/defence_flops.py --out benchmarks/results/defence_flops_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defence_cost import DEFENCES, Row, make_batches, selected_rows  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="minilm", help="backbone name, path or alias (default: minilm)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--length", type=int, default=64, help="tokens per example (every batch is full length)")
    p.add_argument("--defences", default=",".join(DEFENCES), help="comma-separated rows of DEFENCES")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    args.device = "cpu"  # FLOPs do not depend on the device
    return args


def step_flops(row: Row, batch: dict) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        row.step(batch)
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from asa_plugin.plugins import get_plugin_manager

    pm = get_plugin_manager()
    names = selected_rows(args.defences)
    if names is None:
        return 2
    flops = {}
    for name in names:
        row = Row(name, DEFENCES[name], args, pm)
        batch = make_batches(row.adapter.tokenizer, 1, args.batch_size, args.length, "cpu", args.seed)[0]
        row.defence.attach()
        flops[name] = step_flops(row, batch)
        print(f"{name:16s} {flops[name] / 1e9:9.2f} GFLOP  {flops[name] / flops[names[0]]:.3f}x {names[0]}",
              flush=True)
    results = [{"defence": n, "config": DEFENCES[n], "gflops_per_step": round(f / 1e9, 3),
                f"flops_ratio_vs_{names[0]}": round(f / flops[names[0]], 4)} for n, f in flops.items()]
    setup = {"backbone": args.backbone, "batch_size": args.batch_size, "length": args.length,
             "counted": "matrix products (torch.utils.flop_counter)", "torch": torch.__version__}
    if args.out:
        Path(args.out).write_text(json.dumps({"setup": setup, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
