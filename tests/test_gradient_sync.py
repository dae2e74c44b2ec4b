"""One gradient all-reduce per training step, whatever the number of backward passes (issue 31, defect 5).

FGM, PGD and FreeLB call ``backward`` 2 to K times per step; DDP all-reduces at every backward whose forward
ran outside ``no_sync``. Only the last needs it (DDP reduces the gradients accumulated by then). A one-process
gloo group with a real ``DistributedDataParallel`` counts the reductions through a communication hook (the
first bucket of each backward marks one reduction) and checks that the gradients are those of the plain model.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from asa_plugin.adapters.loading import load_adapter
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from asa_plugin.defences.base import build_defence
from asa_plugin.plugins import get_plugin_manager
from asa_plugin.training.distributed import TrainedModules

TEXTS = ["the movie was good and really fun", "bad boring plot", "i love it", "a very awful film"]

CASES = [  # (defence names, backward passes per step)
    (["vanilla"], 1), (["asa"], 1), (["fgm"], 2), (["pgd"], 2), (["freelb"], 5), (["asa", "freelb"], 5),
    (["scal"], 1), (["uscal"], 1),
]


@pytest.fixture
def process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _step(tiny_bert_dir, names: list[str], wrap: bool) -> tuple[torch.Tensor, int]:
    """(the step's gradients of the model and the defence's modules, gradient reductions during the step)."""
    torch.manual_seed(0)
    adapter = load_adapter(str(tiny_bert_dir), num_labels=2)
    registry = get_plugin_manager().defences
    params = {n: registry.get(n).Params() for n in names}
    if "freelb" in names:  # FreeLB's random start: the same noise on both paths
        params["freelb"].init_mag = 0.0
    defence = build_defence(names, params, adapter, registry)
    modules = TrainedModules(adapter.model, defence.trainable_modules())
    reductions: list[int] = []
    if wrap:
        ddp = DistributedDataParallel(modules)

        def counting(state, bucket):
            reductions.append(bucket.index())
            return default_hooks.allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, counting)
        adapter.runner = ddp
    batch = dict(adapter.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0, 1, 0])
    defence.attach()
    torch.manual_seed(1)
    defence.training_step(batch, lambda loss: loss.backward())
    defence.detach()
    grads = torch.cat([p.grad.flatten() for p in modules.parameters() if p.grad is not None])
    return grads, reductions.count(0)


@pytest.mark.parametrize("names,passes", CASES, ids=["+".join(c[0]) for c in CASES])
def test_one_gradient_all_reduce_per_step_and_the_same_gradients(tiny_bert_dir, process_group, names, passes):
    plain, _ = _step(tiny_bert_dir, names, wrap=False)
    synced, reductions = _step(tiny_bert_dir, names, wrap=True)
    assert reductions == 1, f"{reductions} gradient all-reduces in one step of {passes} backward passes"
    assert plain.abs().sum() > 0
    torch.testing.assert_close(synced, plain, rtol=1e-6, atol=1e-8)  # world size 1: a mean over one process
