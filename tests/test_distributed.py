"""Training under several processes (DDP over gloo on CPU), launched as a user launches it.

Each launch starts real processes through ``accelerate launch`` (``ACCELERATE_USE_CPU=1``), so
these tests are few: one two-process launch trains every built-in defence in turn, one
one-process launch trains each defence's single-process equivalent, and one run is killed and
resumed. The tiny model of the comparisons has dropout off, so a step depends only on the weights
and the data; the resumed run has it on, so a resume must restore every process's RNG state.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
import tomllib
import torch
from safetensors.torch import load_file
from tiny import tiny_model_dir, write_sentiment_tsv

PROBE = str(Path(__file__).with_name("ddp_probe.py"))
KILL_AT_STEP = str(Path(__file__).with_name("kill_at_step.py"))  # runs a command, SIGKILLs it after a given step
B = 8
"""Per-process batch size of the two-process runs."""

# (id, [defence] TOML, how a single process takes the same two batches per step as two processes:
#  "batch" = one batch of 2B; "accumulate" = two micro-batches of B, when the loss of a batch is
#  not the mean of its halves' losses)
CASES = [
    ("vanilla", 'name = "vanilla"', "batch"),
    ("asa", 'name = "asa"', "batch"),
    ("fgm", 'name = "fgm"', "batch"),
    ("pgd", 'name = "pgd"', "batch"),
    # FreeLB's random start is drawn per process (the two halves and one 2B batch draw different
    # noise); init_mag = 0 starts at zero, so the comparison checks everything else.
    ("freelb", 'name = "freelb"\ninit_mag = 0.0', "batch"),
    # InfoNCE's negatives are the other examples of a process's own batch: two processes with B
    # contrast against B - 1 negatives, one process with 2B against 2B - 1, a different loss.
    # Two micro-batches of B (gradient accumulation) are the exact single-process equivalent.
    ("scal", 'name = "scal"', "accumulate"),
    ("uscal", 'name = "uscal"', "accumulate"),
    ("asa+freelb", 'name = ["asa", "freelb"]\n[freelb]\ninit_mag = 0.0', "batch"),
    ("freelb++", 'name = "freelb++"\nadv_steps = 3\ninit_mag = 0.0', "batch"),
    # CreAT's Gaussian start is drawn per process (init_std = 0 here); its ascent weighs the batch-mean CE
    # against the batch-summed cosine (the authors' cos_loss), so the direction depends on the batch size:
    # two micro-batches of B are the single-process equivalent.
    ("creat", 'name = "creat"\ninit_std = 0.0', "accumulate"),
    # InfoBERT's anchored pairs form InfoNCE chunks within a process's batch (like SCAL's negatives), and
    # its CLUB negatives are random draws per process (beta = 0 here; its maths: test_literature_baselines).
    ("infobert", 'name = "infobert"\ninit_mag = 0.0\nbeta = 0.0', "accumulate"),
    # TAVAT's perturbation vocabulary: every process adds every process's update; per-example
    # normalisation (the default normalises over a process's batch).
    ("tavat", 'name = "tavat"\ninit_mag = 0.0\nnormalize = "example"', "batch"),
]
IDS = [c[0] for c in CASES]
WEIGHT_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, *args: str, use_cpu: bool = True, **env: str) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``args`` on ``processes`` CPU processes (plain python for one).

    The free port is found before the launcher binds it, so another program (a concurrent test
    session) can take it first: the launcher then fails before any process starts, with EADDRINUSE,
    and only that failure is retried on a new port."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    if use_cpu:
        environment["ACCELERATE_USE_CPU"] = "1"
    for _ in range(3):
        command = [sys.executable]
        if processes > 1:
            command += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", str(free_port())]
        proc = subprocess.run([*command, *args], capture_output=True, text=True, env=environment, timeout=600)
        if not (processes > 1 and proc.returncode != 0 and "EADDRINUSE" in proc.stderr):
            break
    return proc


def failure(proc: subprocess.CompletedProcess) -> str:
    """What a failed launch said: every rank's error lines first (the launcher's own traceback
    otherwise fills the message), then the tail of stderr."""
    errors = [line for line in proc.stderr.splitlines() if "Error" in line or "error:" in line]
    return "\n".join(errors[-20:]) + "\n---\n" + proc.stderr[-1500:]


def write_config(path: Path, model: Path, data: dict[str, Path], defence: str, run_dir: Path, **train) -> Path:
    config = {
        "model": {"backbone": str(model), "num_labels": 2, "max_length": 32},
        "data": {"train_file": str(data["train"]), "dev_file": str(data["dev"])},
        "defence": tomllib.loads(defence),
        "train": {"batch_size": B, "eval_batch_size": 8, "lr": 5e-3, "warmup_ratio": 0.0, "seed": 7,
                  "group_by_length": False, "log_every_steps": 1, **train},
        "output": {"run_dir": str(run_dir)},
    }
    path.write_text(tomli_w.dumps(config))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    model = tiny_model_dir(root / "tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    # 96 training examples: 12 batches of B, 6 of 2B. 37 eval examples: an uneven last batch.
    data = {"train": write_sentiment_tsv(root / "train.tsv", 96, seed=1),
            "dev": write_sentiment_tsv(root / "dev.tsv", 37, seed=2)}
    return root, model, data


def run_probe(processes: int, specs: list[dict], spec_file: Path) -> None:
    spec_file.write_text(json.dumps(specs))
    proc = launch(processes, PROBE, "train", str(spec_file))
    assert proc.returncode == 0, failure(proc)


@pytest.fixture(scope="module")
def every_defence(setup):
    """Every case trained 3 steps by two processes with B and by one process with 2B (or 2 x B)."""
    root, model, data = setup
    two, one = [], []
    for name, defence, single in CASES:
        case = root / name
        case.mkdir()
        two.append({"config": str(write_config(case / "two.toml", model, data, defence, case / "run-two",
                                               max_steps=3)),
                    "weights": str(case / "weights-two")})
        single_train = ({"batch_size": 2 * B} if single == "batch" else {"gradient_accumulation_steps": 2})
        one.append({"config": str(write_config(case / "one.toml", model, data, defence, case / "run-one",
                                               max_steps=3, **single_train)),
                    "weights": str(case / "weights-one")})
    run_probe(2, two, root / "two.json")
    run_probe(1, one, root / "one.json")
    return root


def weights(directory: Path, rank: int = 0) -> dict[str, torch.Tensor]:
    return load_file(directory / f"rank{rank}.safetensors")


@pytest.mark.parametrize("name", IDS)
def test_both_processes_hold_identical_model_and_defence_weights(every_defence, name):
    case = every_defence / name
    rank0, rank1 = weights(case / "weights-two", 0), weights(case / "weights-two", 1)
    assert rank0.keys() == rank1.keys()
    differing = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    assert differing == []
    if name.startswith("asa"):  # the adversaries are trained modules, synchronised like the model
        assert any(k.startswith("extras.0.per_layer") for k in rank0)
    initial = load_file(every_defence / "tiny" / "model.safetensors")
    moved = max((rank0[f"model.{k}"] - v).abs().max().item() for k, v in initial.items())
    # Three steps really trained the model, far beyond the tolerance the comparisons use. Not 100x: Adam
    # moves a weight by at most the step's rate, and lr 5e-3 decaying linearly over 3 steps (5e-3, 3.3e-3,
    # 1.7e-3) sums to 1e-2 = 100x exactly, which a weight whose gradient kept its sign reaches only up to
    # weight decay (tavat's best weight moved 0.0099998).
    assert moved > 10 * WEIGHT_TOLERANCE


@pytest.mark.parametrize("name", IDS)
def test_two_processes_with_batch_b_match_one_process_with_batch_2b(every_defence, name):
    case = every_defence / name
    two, one = weights(case / "weights-two"), weights(case / "weights-one")
    assert two.keys() == one.keys()
    worst = max((two[k] - one[k]).abs().max().item() for k in two)
    assert worst < WEIGHT_TOLERANCE
    losses_two = [s["loss"] for s in json.loads((case / "run-two" / "metrics.json").read_text())["step_history"]]
    losses_one = [s["loss"] for s in json.loads((case / "run-one" / "metrics.json").read_text())["step_history"]]
    assert len(losses_two) == len(losses_one) == 3
    assert losses_two == pytest.approx(losses_one, rel=LOSS_TOLERANCE)


SLOW_RANK = {"ADVROBUST_TEST_SAVE_DELAY": "1:2"}
"""Rank 1 starts writing each checkpoint 2 s after rank 0 (a loaded machine makes such a rank): the
main process must wait for its RNG state before it renames the checkpoint into place."""


@pytest.fixture(scope="module")
def two_process_asa_runs(setup):
    """ASA on two processes, straight and killed -9 at step 3 then resumed. B = 11 makes 9 batches:
    each epoch's last round is padded (Accelerate's even batches) and the resume skips mid-epoch.
    Dropout is on (each process draws its own masks, so a resume needs every process's RNG state)
    and rank 1 is slow to save."""
    root, _, data = setup
    model = tiny_model_dir(root / "tiny-dropout")  # BERT's default dropout, 0.1
    runs = {}
    for name in ("straight", "killed"):
        runs[name] = write_config(root / f"asa-{name}.toml", model, data, 'name = "asa"', root / f"asa-{name}",
                                  batch_size=11, epochs=3, lr=1e-2, checkpoint_every_steps=2)
    straight = launch(2, "-m", "asa_plugin.cli", "train", str(runs["straight"]), **SLOW_RANK)
    assert straight.returncode == 0, failure(straight)
    killed = launch(2, KILL_AT_STEP, "3", "train", str(runs["killed"]), **SLOW_RANK)
    # the launcher reports its workers' deaths by SIGKILL (torch elastic's summary), nothing else
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stderr, failure(killed)
    assert not (root / "asa-killed" / "metrics.json").exists()
    saved = root / "asa-killed" / "checkpoint"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in saved.iterdir()}
    assert not (root / "asa-killed" / "checkpoint.tmp").exists()  # no rank wrote after the swap
    shutil.copytree(root / "asa-killed", root / "asa-killed-copy")
    resumed = launch(2, "-m", "asa_plugin.cli", "train", str(runs["killed"]), "--resume", **SLOW_RANK)
    assert resumed.returncode == 0, failure(resumed)
    return root / "asa-straight", root / "asa-killed"


def test_resume_after_kill_of_two_processes_matches_the_uninterrupted_run(two_process_asa_runs):
    straight, resumed = two_process_asa_runs
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    assert a["steps"] == b["steps"] == 15  # 3 epochs x ceil(9 batches / 2 processes)
    for key in ("eval_accuracy_per_epoch", "asa_mask_ratio_per_layer", "step_history"):
        assert a[key] == b[key]
    for name in ("model/model.safetensors", "asa_adversary.safetensors"):
        wa, wb = load_file(straight / name), load_file(resumed / name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_with_another_number_of_processes_is_one_line_exit_2(two_process_asa_runs):
    _, resumed = two_process_asa_runs
    copy = resumed.with_name("asa-killed-copy")  # the 2-process checkpoint as the kill left it
    config = copy.parent / "asa-killed.toml"
    proc = launch(1, "-m", "asa_plugin.cli", "train", str(config), "--resume", "--set", f"output.run_dir='{copy}'")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "the checkpoint was written by 2 process(es); resume it with the same number (this run has 1)")


def test_only_the_main_process_writes(two_process_asa_runs):
    straight, _ = two_process_asa_runs
    log = (straight / "train.log").read_text()
    assert log.count("epoch 1:") == 1 and log.count("step 1:") == 1


def test_eval_counts_every_example_once_and_equals_one_process(two_process_asa_runs, setup):
    _, _, data = setup
    straight, _ = two_process_asa_runs
    labels = [int(line.rsplit("\t", 1)[1]) for line in data["dev"].read_text().splitlines()[1:]]
    history = json.loads((straight / "metrics.json").read_text())["history"]
    for epoch in history:  # 37 examples in 5 batches over 2 processes: the padding is not counted
        assert epoch["eval_label_counts"] == [labels.count(0), labels.count(1)]
        assert sum(epoch["eval_predicted_counts"]) == len(labels)
    results = {}
    for processes in (1, 2):
        proc = launch(processes, PROBE, "eval", str(straight / "model"), str(data["dev"]), "8")
        assert proc.returncode == 0, failure(proc)
        results[processes] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results[2] == results[1]
    assert results[1]["eval_accuracy"] == history[-1]["eval_accuracy"]
    assert min(results[1]["eval_predicted_counts"]) > 0  # not a constant model: the equality can fail


def test_bf16_autocast_on_cpu_trains_every_defence_and_exports_fp32(setup):
    root, model, data = setup
    specs = []
    for name, defence, _ in CASES:
        case = root / f"bf16-{name}"
        case.mkdir()
        specs.append({"config": str(write_config(case / "c.toml", model, data, defence, case / "run",
                                                 max_steps=2, mixed_precision="bf16")),
                      "weights": str(case / "weights")})
    run_probe(1, specs, root / "bf16.json")
    for name, *_ in CASES:
        case = root / f"bf16-{name}"
        dtypes = json.loads((case / "weights" / "dtypes0.json").read_text())
        assert dtypes["model"] == ["torch.bfloat16"]  # every Linear of the model ran under autocast
        if name.startswith("asa"):  # the adversaries score in float32 (their tau-term gradient sums L^2 units)
            assert dtypes["extras"] == ["torch.float32"]
            metrics = json.loads((case / "run" / "metrics.json").read_text())
            assert all(r is not None for r in metrics["asa_mask_ratio_per_layer"])
        metrics = json.loads((case / "run" / "metrics.json").read_text())
        assert all(torch.isfinite(torch.tensor(s["loss"])) for s in metrics["step_history"])
        exported = load_file(case / "run" / "model" / "model.safetensors")
        assert {v.dtype for v in exported.values()} == {torch.float32}


@pytest.mark.parametrize("processes, use_cpu, message", [
    (1, True, 'train.mixed_precision = "fp16" needs a GPU; on CPU use "bf16" or "no"'),
    (2, False, "launched as 2 processes but they do not form one group; without a GPU set ACCELERATE_USE_CPU=1"),
])
def test_misconfigured_launch_is_one_line_exit_2(setup, processes, use_cpu, message):
    root, model, data = setup
    config = write_config(root / f"bad-{processes}.toml", model, data, 'name = "vanilla"', root / f"bad-{processes}",
                          mixed_precision="fp16" if processes == 1 else "no")
    proc = launch(processes, "-m", "asa_plugin.cli", "train", str(config), use_cpu=use_cpu)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("advrobust train: error:")]
    assert len(errors) == 1 and message in errors[0]  # rank 0's only; the launcher's report follows
    assert not any('File "' in line and "asa_plugin" in line for line in proc.stderr.splitlines())  # no traceback
    if processes == 1:
        assert proc.returncode == 2


def test_the_multi_node_example_is_an_accelerate_config_file():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(Path(__file__).parents[1] / "examples" / "accelerate" / "two-nodes.yaml"))
    assert (config.num_machines, config.num_processes, config.distributed_type.value) == (2, 16, "MULTI_GPU")
