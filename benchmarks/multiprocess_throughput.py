"""Training throughput on CPU: 2 processes x 1 thread vs 1 process x 2 threads vs 1 x 1.

Every layout runs ``advrobust train`` on the same examples with the same *global* batch (two
processes take ``--global-batch / 2`` each), for each defence in ``--defences``. Layouts and
defences are interleaved over ``--repeats`` rounds so that load from other users of the machine
spreads over all of them; the table reports the median of ``train_examples_per_second`` (training
time only: no start-up, no evaluation) and the machine's load average before and after.

    python benchmarks/multiprocess_throughput.py --data ../shared/data/sst2/train.tsv --steps 12

``--count-allreduce`` measures no time: it trains each defence on 2 processes (gloo) and counts, per
optimizer step, the gradient all-reduces DDP makes (a communication hook sees every bucket; the first bucket of
a backward marks one reduction) and the other ``torch.distributed.all_reduce`` calls (loss means, ASA's mask
counts). The counts are deterministic, so they compare code versions on a loaded machine:

    python benchmarks/multiprocess_throughput.py --data ../shared/data/sst2/train.tsv --count-allreduce
        --defences vanilla,asa,fgm,pgd,freelb --steps 4 --global-batch 8 --max-length 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LAYOUTS = [  # (name, processes, threads per process)
    ("1 proc x 1 thread", 1, 1),
    ("1 proc x 2 threads", 1, 2),
    ("2 procs x 1 thread", 2, 1),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(config: Path, processes: int, threads: int, nice: int) -> float:
    """One ``advrobust train`` run; its training examples per second."""
    command = ["nice", "-n", str(nice), sys.executable]
    if processes > 1:
        command += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--num_cpu_threads_per_process", str(threads), "--main_process_port", str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ACCELERATE_USE_CPU": "1"}
    proc = subprocess.run([*command, "-m", "asa_plugin.cli", "train", str(config)], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({config}):\n{proc.stderr[-2000:]}")
    metrics = json.loads((Path(tomllib_load(config)["output"]["run_dir"]) / "metrics.json").read_text())
    return metrics["train_examples_per_second"]


def tomllib_load(path: Path) -> dict:
    import tomllib

    return tomllib.loads(path.read_text())


def write_config(workdir: Path, name: str, args, defence: str, processes: int, train_file: Path,
                 dev_file: Path) -> Path:
    import tomli_w

    config = {
        "model": {"backbone": args.backbone, "max_length": args.max_length},
        "data": {"train_file": str(train_file), "dev_file": str(dev_file)},
        "defence": {"name": defence},
        "train": {"max_steps": args.steps, "batch_size": args.global_batch // processes, "lr": 2e-5,
                  "warmup_ratio": 0.0, "seed": args.seed, "log_every_steps": 10_000, "eval_batch_size": 32},
        "output": {"run_dir": str(workdir / name / "run")},
    }
    path = workdir / f"{name}.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def probe(config: str, out: str) -> None:
    """Child side of ``--count-allreduce`` (run under ``accelerate launch``): train ``config`` counting the
    gradient all-reduces and the other all-reduce calls; each process writes ``OUT.rank<i>.json``."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from asa_plugin.config import load_config
    from asa_plugin.training.loop import train

    counts = {"gradient_all_reduces": 0, "gradient_buckets": 0, "other_all_reduces": 0}
    in_hook = []
    real_all_reduce, real_init = dist.all_reduce, DistributedDataParallel.__init__

    def counting_all_reduce(*args, **kwargs):
        if not in_hook:
            counts["other_all_reduces"] += 1
        return real_all_reduce(*args, **kwargs)

    def hook(state, bucket):
        counts["gradient_buckets"] += 1
        counts["gradient_all_reduces"] += bucket.index() == 0
        in_hook.append(1)
        try:
            return default_hooks.allreduce_hook(state, bucket)
        finally:
            in_hook.pop()

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.register_comm_hook(None, hook)

    dist.all_reduce, DistributedDataParallel.__init__ = counting_all_reduce, init
    metrics = train(load_config(config), progress=False)
    Path(f"{out}.rank{dist.get_rank()}.json").write_text(json.dumps({**counts, "steps": metrics["steps"]}))


def count_allreduce(args, workdir: Path, train_file: Path, dev_file: Path) -> dict:
    """Per defence: gradient all-reduces and other all-reduce calls per optimizer step (rank 0; 2 processes)."""
    counts = {}
    for defence in args.defences.split(","):
        config = write_config(workdir, f"count-{defence}", args, defence, 2, train_file, dev_file)
        out = workdir / f"count-{defence}"
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--num_cpu_threads_per_process", "1", "--main_process_port", str(free_port()),
                   __file__, "--data", args.data, "--probe", str(config), str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"count run failed ({defence}):\n{proc.stderr[-2000:]}")
        found = json.loads(Path(f"{out}.rank0.json").read_text())
        steps = found["steps"]
        counts[defence] = {**found, "gradient_all_reduces_per_step": found["gradient_all_reduces"] / steps,
                           "other_all_reduces_per_step": found["other_all_reduces"] / steps}
        print(f"{defence}: {counts[defence]}", file=sys.stderr, flush=True)
    print("| defence | gradient all-reduces / step | DDP buckets / step | other all-reduce calls / step |")
    print("|---|---:|---:|---:|")
    for defence, c in counts.items():
        print(f"| {defence} | {c['gradient_all_reduces_per_step']:g} | {c['gradient_buckets'] / c['steps']:g} | "
              f"{c['other_all_reduces_per_step']:g} |")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="TSV with sentence/label columns (e.g. SST-2 train)")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--defences", default="vanilla,asa", help="comma-separated defence names")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--global-batch", type=int, default=32, help="examples per optimizer step, all processes")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--nice", type=int, default=10)
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    p.add_argument("--count-allreduce", action="store_true",
                   help="count all-reduces per step on 2 processes instead of timing (deterministic)")
    p.add_argument("--probe", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe:
        probe(*args.probe)
        return 0
    if args.global_batch % 2:
        p.error("--global-batch must be even (two processes take half each)")

    from asa_plugin.config import DataConfig
    from asa_plugin.data import load_split

    workdir = Path(tempfile.mkdtemp(prefix="multiprocess-throughput-"))
    examples = load_split(DataConfig(dataset=None, train_file=args.data), "train", 2,
                          limit=args.steps * args.global_batch, seed=args.seed)
    train_file, dev_file = workdir / "train.tsv", workdir / "dev.tsv"
    train_file.write_text("sentence\tlabel\n" + "".join(f"{e.text}\t{e.label}\n" for e in examples))
    dev_file.write_text("sentence\tlabel\n" + "".join(f"{e.text}\t{e.label}\n" for e in examples[:32]))

    if args.count_allreduce:
        counts = count_allreduce(args, workdir, train_file, dev_file)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"backbone": args.backbone, "global_batch": args.global_batch,
                                            "max_length": args.max_length, "steps": args.steps,
                                            "processes": 2, "counts": counts}, indent=2))
        return 0
    load_before = os.getloadavg()
    figures: dict[str, dict[str, list[float]]] = {d: {name: [] for name, *_ in LAYOUTS}
                                                  for d in args.defences.split(",")}
    for r in range(args.repeats):
        for defence, per_layout in figures.items():
            for name, processes, threads in LAYOUTS:
                tag = f"{defence}-{processes}x{threads}-r{r}"
                config = write_config(workdir, tag, args, defence, processes, train_file, dev_file)
                per_layout[name].append(run(config, processes, threads, args.nice))
                print(f"round {r + 1} {defence:8s} {name}: {per_layout[name][-1]:.2f} ex/s "
                      f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    result = {
        "backbone": args.backbone, "global_batch": args.global_batch, "max_length": args.max_length,
        "steps": args.steps, "repeats": args.repeats, "nice": args.nice, "cpu_count": os.cpu_count(),
        "loadavg_before": load_before, "loadavg_after": load_after, "machine": platform.platform(),
        "runs": figures,
        "median_examples_per_second": {d: {name: statistics.median(v) for name, v in per.items()}
                                       for d, per in figures.items()},
    }
    header = " | ".join(name for name, *_ in LAYOUTS)
    print(f"| defence | {header} |\n|---|" + "---|" * len(LAYOUTS))
    for defence, medians in result["median_examples_per_second"].items():
        print(f"| {defence} | " + " | ".join(f"{medians[name]:.2f}" for name, *_ in LAYOUTS) + " |")
    print(f"examples/s, median of {args.repeats}; global batch {args.global_batch}, {args.steps} steps, "
          f"max_length {args.max_length}, {args.backbone}; {os.cpu_count()} CPUs, load average "
          f"{load_before[0]:.1f} before / {load_after[0]:.1f} after")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
