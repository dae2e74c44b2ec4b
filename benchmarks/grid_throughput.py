"""Wall time of one small real grid run several ways: sequential, local processes, Ray, SLURM jobs (issues 22, 34).

The grid: MiniLM on SST-2 (``vanilla`` and ``asa``, ``--steps`` training steps each, one seed), attacked
with ``deepwordbug`` and ``pwws`` on ``--examples`` dev examples (stock profile). Each mode runs the whole
grid into its own bench directory with ``advrobust bench`` in a fresh process:

- ``sequential``: ``--max-parallel 1`` (cells one after another in the bench's process, as before issue 22;
  attacks with ``attack.workers = 1``, ``attack.threads = 1`` so every mode computes with one thread per cell);
- ``local``: ``--max-parallel N`` (N = ``--parallel``, default the CPU count): N cell processes at once;
- ``lend``: as ``local``, with ``--lend-idle-cores``: a core no cell uses is lent to the running training
  cell as a second torch thread (when vanilla's cells are done and ASA still trains);
- ``ray``: ``--executor ray`` on a local Ray cluster of N CPUs (``bench.ray_num_cpus``);
- ``slurm``: ``--executor slurm`` through submitit's local executor (``bench.slurm.cluster = "local"``: every
  cell a job, N at once, as on a SLURM cluster but with processes instead of sbatch).

``sequential``, ``local``, ``ray`` and ``slurm`` must write the same per-example rows (checked here too); ``lend``'s
weights differ from a 1-thread run's in the last bits, so its rows are compared and reported, not required
to match. Writes
``benchmarks/results/grid_throughput_cpu.json`` with the load average before and after each mode.

    python benchmarks/grid_throughput.py                      # the issue's grid: 300 steps, 50 examples
    python benchmarks/grid_throughput.py --steps 40 --examples 10 --modes sequential local
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
[bench]
defences = ["vanilla", "asa"]
recipes = ["deepwordbug", "pwws"]
out_dir = "{out}"

[model]
backbone = "minilm"
num_labels = 2
max_length = 64

[data]
dataset = "sst2"
max_train_examples = {train_examples}
subset_seed = 0

[train]
epochs = 1
max_steps = {steps}
batch_size = 32
lr = 1e-4
warmup_ratio = 0.1
seed = 42

[attack]
profile = "stock"
split = "dev"
num_examples = {examples}
seed = 765
workers = 1
threads = 1
"""


def rows(out: Path) -> dict[str, list]:
    """Per-example rows of every attack, timing removed (they must not depend on the executor)."""
    sys.path.insert(0, str(ROOT))
    from asa_plugin.attacks.results import read_rows, without_timing

    return {str(p.relative_to(out)): [without_timing(r) for r in read_rows(p)]
            for p in sorted(out.glob("runs/*/attack/*/results.jsonl"))}


def run_mode(mode: str, parallel: int, root: Path, args) -> dict:
    out = root / mode
    config = root / f"{mode}.toml"
    config.write_text(CONFIG.format(out=out, steps=args.steps, examples=args.examples,
                                    train_examples=args.steps * 32))
    flags = {"sequential": ["--max-parallel", "1"], "local": ["--max-parallel", str(parallel)],
             "lend": ["--max-parallel", str(parallel), "--lend-idle-cores"],
             "ray": ["--executor", "ray", "--set", f"bench.ray_num_cpus={parallel}"],
             "slurm": ["--executor", "slurm", "--set", "bench.slurm.cluster='local'",
                       "--set", f"bench.slurm.max_parallel={parallel}", "--set", "bench.slurm.poll_s=0.5"]}[mode]
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "asa_plugin.cli", "bench", str(config), "--no-progress", *flags],
                          capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{mode}: advrobust bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(f"{mode}: {seconds:.1f} s (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    return {"mode": mode, "parallel": 1 if mode == "sequential" else parallel, "seconds": round(seconds, 1),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "rows": rows(out),
            "thread_changes": {p.parent.name: json.loads(p.read_text())["threads"].get("changes", [])
                               for p in sorted(out.glob("runs/*/metrics.json"))}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="training steps per defence")
    p.add_argument("--examples", type=int, default=50, help="dev examples attacked per recipe")
    p.add_argument("--parallel", type=int, default=os.cpu_count(), help="cells at once (local, Ray, SLURM)")
    p.add_argument("--modes", nargs="+", default=["sequential", "local", "lend", "ray", "slurm"],
                   choices=["sequential", "local", "lend", "ray", "slurm"])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grid_throughput_cpu.json"))
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="grid-throughput-"))
    try:
        results = [run_mode(mode, args.parallel, root, args) for mode in args.modes]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    same = all(r["rows"] == results[0]["rows"] for r in results if r["mode"] != "lend")
    base = next((r["seconds"] for r in results if r["mode"] == "sequential"), None)
    local = next((r["seconds"] for r in results if r["mode"] == "local"), None)
    first = results[0]["rows"]
    for r in results:
        r["same_rows_as_first_mode"] = r.pop("rows") == first
        r["speedup_vs_sequential"] = round(base / r["seconds"], 2) if base else None
        r["seconds_vs_local"] = round(r["seconds"] / local, 2) if local else None  # slurm: within 1.15 is the goal
    import torch

    record = {"setup": {"defences": ["vanilla", "asa"], "recipes": ["deepwordbug", "pwws"], "backbone": "minilm",
                        "dataset": "sst2", "steps": args.steps, "examples": args.examples, "cpu_count": os.cpu_count(),
                        "machine": platform.platform(), "torch": torch.__version__},
              "same_rows_in_every_1_thread_mode": same, "results": results}
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
