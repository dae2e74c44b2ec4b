"""Distributed and compiled modes of ``advrobust train``: what works (DDP, a ``torch.compile``'d model for the
embedding-perturbation defences) and what is refused in one line at start (DeepSpeed, FSDP, ASA compiled).

DeepSpeed and FSDP need several GPUs (and DeepSpeed is not installed here): their refusal is tested with an
Accelerator that reports the distributed type ``accelerate launch --use_deepspeed`` / ``--use_fsdp`` gives.
torch.compile runs for real, with dynamo's ``eager`` backend (graph capture without a C++ compiler).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from asa_plugin.adapters.loading import load_adapter
from safetensors.torch import load_file

from asa_plugin.cli import main
from asa_plugin.config import build_defence_config
from asa_plugin.defences.base import build_defence
from asa_plugin.defences.perturbation import without_gradient_sync
from asa_plugin.plugins import get_plugin_manager


@pytest.fixture
def fresh_accelerate(request, monkeypatch):
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")
    AcceleratorState._reset_state(reset_partial_state=True)
    request.addfinalizer(lambda: AcceleratorState._reset_state(reset_partial_state=True))


def reporting(kind: DistributedType) -> type[Accelerator]:
    class Reporting(Accelerator):
        @property
        def distributed_type(self):
            return kind

    return Reporting


REFUSED = [  # (distributed type, what the one line says)
    (DistributedType.DEEPSPEED, "DeepSpeed (it steps the optimizer at every backward, and FGM/PGD/FreeLB"),
    (DistributedType.FSDP, "FSDP (the defences read the word embeddings and run modules outside the sharded model)"),
]


@pytest.mark.parametrize("kind,message", REFUSED, ids=["deepspeed", "fsdp"])
def test_train_refuses_deepspeed_and_fsdp_in_one_line_before_the_data_loads(fresh_accelerate, monkeypatch, capsys,
                                                                             tmp_path, run_config, kind, message):
    from asa_plugin.training import loop

    monkeypatch.setattr(loop, "Accelerator", reporting(kind))
    monkeypatch.setattr(loop.Task, "load_data", lambda *a: pytest.fail("the data loaded before the refusal"))
    assert main(["train", str(run_config('name = "freelb"'))]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("advrobust train: error: ") and message in line
    assert "supported: one process, or several with DDP (accelerate launch --multi_gpu" in line


def test_train_refuses_asa_on_a_compiled_model_in_one_line(fresh_accelerate, monkeypatch, capsys, run_config):
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "EAGER")  # what accelerate launch --dynamo_backend eager sets
    assert main(["train", str(run_config('name = ["asa", "freelb"]'))]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "defence asa adds its attention bias through forward hooks, which a torch.compile'd model ignores" in line
    assert "without --dynamo_backend" in line


def test_train_compiled_gives_the_weights_of_eager_training(fresh_accelerate, monkeypatch, tmp_path, run_config):
    """PGD (input gradients through ``autograd.grad``, several passes a step) through the compiled model."""
    compiled_modules = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled_modules.append(model)
                        or real_compile(model, **kw))
    for backend in ("NO", "EAGER"):
        monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", backend)
        AcceleratorState._reset_state(reset_partial_state=True)
        config = run_config('name = "pgd"', train="max_steps = 2\nepochs = 1")
        assert main(["train", str(config), "--set", f"output.run_dir='{tmp_path / backend}'"]) == 0
    assert len(compiled_modules) == 1  # the EAGER run's model, by Accelerate's prepare
    eager, compiled = (load_file(str(tmp_path / b / "model" / "model.safetensors")) for b in ("NO", "EAGER"))
    assert all(torch.equal(eager[k], compiled[k]) for k in eager)


@pytest.fixture
def one_process_group(tmp_path):
    """A real (gloo) process group of one process, so that DistributedDataParallel can wrap a model on CPU."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_checks_see_through_torch_compile(one_process_group, tiny_bert_dir):
    """``torch.compile(DDP(model))`` (what Accelerate builds under ``--multi_gpu --dynamo_backend``) is still
    DDP to the defences: input-gradient passes skip the gradient all-reduce, and recomputations run the bare
    model; a PGD step through it gives the gradients of the uncompiled wrapper."""
    pm = get_plugin_manager()
    grads = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        adapter = load_adapter(str(tiny_bert_dir), 2)
        ddp = torch.nn.parallel.DistributedDataParallel(adapter.model)
        adapter.runner = torch.compile(ddp, backend="eager") if compiled else ddp
        with without_gradient_sync(adapter):
            assert ddp.require_backward_grad_sync is False
        assert ddp.require_backward_grad_sync is True
        with adapter.unwrapped_runner():
            assert adapter.runner is adapter.model
        spec = build_defence_config({"name": "pgd"}, "test", pm.defences)
        defence = build_defence(spec.names, spec.params, adapter, pm.defences)
        batch = {"input_ids": torch.tensor([[2, 10, 11, 12, 3], [2, 13, 14, 3, 0]]),
                 "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]), "labels": torch.tensor([0, 1])}
        adapter.model.eval()  # no dropout: the two runs compare exactly
        defence.training_step(batch, lambda loss: loss.backward())
        grads[compiled] = [p.grad.clone() for p in adapter.model.parameters() if p.grad is not None]
    assert len(grads[True]) == len(grads[False]) > 0
    assert all(torch.equal(a, b) for a, b in zip(grads[False], grads[True]))
