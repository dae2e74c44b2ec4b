"""Training cost of each defence against vanilla, measured side by side in one run.

For every defence in ``DEFENCES`` (name -> its ``[defence]`` config table) the script builds a
fresh model from the same seed and times full training steps (the defence's forward/backward
work, clipping, optimizer step) on the *same* batches, interleaving the defences step by step
so that machine load hits all of them alike. It reports median seconds per step and the ratio
to vanilla. For ASA it also reports the adversary's own compute (projections and binarization,
forward and backward, timed in isolation on the same hidden states) as a share of the ASA step,
and for every defence the exported model's parameter count and inference latency vs vanilla.

    python benchmarks/defence_cost.py --steps 5 --out defence_cost.json [--device cuda]

To add a defence, add a row to ``DEFENCES`` (a composition is ``{"name": ["asa", "freelb"],
"asa": {...}, "freelb": {...}}``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

DEFENCES: dict[str, dict[str, Any]] = {
    "vanilla": {"name": "vanilla"},
    "asa": {"name": "asa", "tau": 0.5},
    # The adversary's projection size is its cost knob (default: hidden size).
    "asa-proj64": {"name": "asa", "tau": 0.5, "projection_size": 64},
    # Baselines; by construction fgm ~2x, pgd K+1 and freelb K forward/backward passes per step.
    "fgm": {"name": "fgm"},
    "pgd-k3": {"name": "pgd", "adv_steps": 3},
    "freelb-k3": {"name": "freelb", "adv_steps": 3},
    "freelb-k5": {"name": "freelb", "adv_steps": 5},
    "scal": {"name": "scal"},
    "uscal": {"name": "uscal"},
    "asa+freelb-k3": {"name": ["asa", "freelb"], "freelb": {"adv_steps": 3}},
    # The baselines of issue 35 at their defaults: freelb++ 10 passes, creat 3 (1 + K, K = 2), infobert 3 (K)
    # plus one input-gradient backward per pass, tavat 2 (K) plus its token-table update.
    "freelb++": {"name": "freelb++"},
    "creat": {"name": "creat"},
    "infobert": {"name": "infobert"},
    "tavat": {"name": "tavat"},
    # a2t: a step of an attacking epoch, the clean batch plus its adv_share (20 %) of adversarial examples; the
    # attacks that make them are timed per run (metrics.json a2t_generation_seconds), not per step
    "a2t": {"name": "a2t"},
}
"""Row name -> the ``[defence]`` table it trains with. The first row is the reference."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="minilm", help="backbone name, path or alias (default: minilm)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--length", type=int, default=64, help="tokens per example (every batch is full length)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per defence")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per defence first")
    p.add_argument("--inference-repeats", type=int, default=10, help="timed eval forwards per exported model")
    p.add_argument("--defences", default=",".join(DEFENCES), help="comma-separated rows of DEFENCES")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def make_batches(tokenizer, n: int, batch_size: int, length: int, device: str, seed: int) -> list[dict]:
    """``n`` full-length batches of random ordinary tokens between [CLS] and [SEP]."""
    g = torch.Generator().manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    batches = []
    for _ in range(n):
        ids = ordinary[torch.randint(len(ordinary), (batch_size, length), generator=g)]  # (B, L)
        ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                 "token_type_ids": torch.zeros_like(ids),
                 "labels": torch.randint(2, (batch_size,), generator=g)}
        batches.append({k: v.to(device) for k, v in batch.items()})
    return batches


class Row:
    """One defence with its own model copy and optimizer."""

    def __init__(self, name: str, table: dict[str, Any], args, pm):
        from asa_plugin.adapters.loading import load_adapter

        from asa_plugin.config import TrainConfig, build_defence_config
        from asa_plugin.defences.base import build_defence
        from asa_plugin.training.loop import _optimizer

        torch.manual_seed(args.seed)  # same initial classifier head for every row
        self.name = name
        self.adapter = load_adapter(args.backbone, 2, registry=pm.adapters)
        self.adapter.model.to(args.device).train()
        cfg = build_defence_config(dict(table), f"DEFENCES[{name!r}]", pm.defences)
        self.defence = build_defence(cfg.names, cfg.params, self.adapter, pm.defences)
        for module in self.defence.trainable_modules():
            module.to(args.device)
        self.optimizer = _optimizer(self.adapter.model, self.defence, TrainConfig())
        self.step_seconds: list[float] = []
        self.share = getattr(self.defence.params, "adv_share", None)  # a2t: each step carries adversarial examples

    def step(self, batch: dict) -> None:
        if self.share is not None:  # the batch's first rows, decoded, as this step's adversarial examples
            rows = math.ceil(self.share * batch["input_ids"].shape[0])
            texts = self.adapter.tokenizer.batch_decode(batch["input_ids"][:rows], skip_special_tokens=True)
            self.defence.use_examples([[t, None, int(y)] for t, y in zip(texts, batch["labels"][:rows])], 1)
        self.defence.training_step(batch, lambda loss: loss.backward())
        torch.nn.utils.clip_grad_norm_(self.adapter.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def adversary_seconds(row: Row, batch: dict, device: str, repeats: int) -> float | None:
    """Median seconds of all ASA adversaries' forward + backward on one batch's hidden states."""
    asa = next((p for p in getattr(row.defence, "parts", [row.defence]) if p.name == "asa"), None)
    if asa is None:
        return None
    with torch.no_grad():
        hidden = row.adapter.forward(batch, output_hidden_states=True).hidden_states  # layer inputs
    upstream = torch.randn(batch["input_ids"].shape[0], batch["input_ids"].shape[1],
                           batch["input_ids"].shape[1], device=device)  # (B, L, L)

    def run() -> None:
        total = sum((asa.adversary.mask(i, hidden[i], batch["attention_mask"]) * upstream).sum()
                    for i in asa.adversary.layers)
        total.backward()

    seconds = [timed(run, device) for _ in range(repeats)]
    asa.adversary.zero_grad(set_to_none=True)
    return statistics.median(seconds)


def export_and_time(rows: list[Row], batches: list[dict], args) -> dict[str, dict[str, float]]:
    """Parameter count and median eval-forward seconds of each row's exported model."""
    from transformers import AutoModelForSequenceClassification

    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            row.defence.detach()
            path = row.adapter.export(Path(tmp) / row.name)
            models[row.name] = AutoModelForSequenceClassification.from_pretrained(path).to(args.device).eval()
    seconds: dict[str, list[float]] = {name: [] for name in models}
    inputs = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    with torch.no_grad():
        for model in models.values():  # warm-up
            model(**inputs[0])
        for r in range(args.inference_repeats):
            x = inputs[r % len(inputs)]
            for name, model in models.items():
                seconds[name].append(timed(lambda m=model, x=x: m(**x), args.device))
    return {name: {"parameters": sum(p.numel() for p in model.parameters()),
                   "inference_seconds": statistics.median(seconds[name])} for name, model in models.items()}


def selected_rows(spec: str) -> list[str] | None:
    """The ``DEFENCES`` rows that ``--defences`` names; None, after one line on stderr, if one is unknown."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in DEFENCES]
    if unknown:
        print(f"unknown row {unknown[0]!r}; rows: {', '.join(DEFENCES)}", file=sys.stderr)
        return None
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from asa_plugin.plugins import get_plugin_manager

    pm = get_plugin_manager()
    names = selected_rows(args.defences)
    if names is None:
        return 2
    rows = [Row(n, DEFENCES[n], args, pm) for n in names]
    batches = make_batches(rows[0].adapter.tokenizer, max(args.steps, 1) + args.warmup, args.batch_size,
                           args.length, args.device, args.seed)
    for row in rows:
        row.defence.attach()
    for i in range(args.warmup):
        for row in rows:
            row.step(batches[i])
    for i in range(args.steps):
        order = rows[i % len(rows):] + rows[:i % len(rows)]  # rotate so no row always runs first
        for row in order:
            row.step_seconds.append(timed(lambda r=row, b=batches[args.warmup + i]: r.step(b), args.device))
    adversary = {row.name: adversary_seconds(row, batches[0], args.device, max(args.steps, 3)) for row in rows}
    exported = export_and_time(rows, batches, args)

    reference = rows[0]
    ref_step = statistics.median(reference.step_seconds)
    ref_export = exported[reference.name]
    results = []
    for row in rows:
        step = statistics.median(row.step_seconds)
        result = {
            "defence": row.name, "config": DEFENCES[row.name],
            "seconds_per_step": round(step, 4), "step_ratio_vs_" + reference.name: round(step / ref_step, 3),
            "step_seconds": [round(s, 4) for s in row.step_seconds],
            "adversary_seconds": None if adversary[row.name] is None else round(adversary[row.name], 4),
            "adversary_share_of_step": None if adversary[row.name] is None else round(adversary[row.name] / step, 4),
            "exported_parameters": exported[row.name]["parameters"],
            "parameter_ratio_vs_" + reference.name: exported[row.name]["parameters"] / ref_export["parameters"],
            "inference_seconds": round(exported[row.name]["inference_seconds"], 5),
            "inference_ratio_vs_" + reference.name: round(
                exported[row.name]["inference_seconds"] / ref_export["inference_seconds"], 3),
        }
        results.append(result)
    setup = {"backbone": args.backbone, "batch_size": args.batch_size, "length": args.length,
             "steps": args.steps, "warmup": args.warmup, "device": args.device,
             "threads": torch.get_num_threads(), "torch": torch.__version__}
    print_table(results, setup, reference.name)
    if args.out:
        Path(args.out).write_text(json.dumps({"setup": setup, "results": results}, indent=2))
    return 0


def print_table(results: list[dict], setup: dict, reference: str) -> None:
    print(f"defence cost: {setup['backbone']}, batch {setup['batch_size']} x {setup['length']} tokens, "
          f"{setup['steps']} steps each, {setup['device']} ({setup['threads']} threads)")
    header = (f"{'defence':<16}{'s/step':>9}{'ratio':>8}{'adv share':>11}{'params':>12}{'infer s':>10}"
              f"{'infer ratio':>13}")
    print(header)
    print("-" * len(header))
    for r in results:
        share = "-" if r["adversary_share_of_step"] is None else f"{r['adversary_share_of_step']:.1%}"
        print(f"{r['defence']:<16}{r['seconds_per_step']:>9.3f}{r['step_ratio_vs_' + reference]:>8.2f}"
              f"{share:>11}{r['exported_parameters']:>12,}{r['inference_seconds']:>10.4f}"
              f"{r['inference_ratio_vs_' + reference]:>13.3f}")


if __name__ == "__main__":
    sys.exit(main())
