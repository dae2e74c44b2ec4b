"""What multi-process (DDP) training needs beyond Accelerate: one wrapped module, collective checks.

Under ``accelerate launch`` the model and the defence's own modules (ASA's adversaries) must be
synchronised across processes. DDP all-reduces a parameter's gradient only when the *wrapper's*
``forward`` ran before the backward (it arms the reducer), and a defence calls its modules from
inside the model's forward (an attention-bias hook), never through a wrapper of their own. So the
loop wraps both in one :class:`TrainedModules`, whose forward is the model's: every forward of the
model arms the reducer for the model and the defence modules together, and one backward
all-reduces both. Defences that run several forwards before one backward (ASA, SCAL, USCAL) need
nothing special; those with several backwards per step (FGM, PGD, FreeLB) run all but the last under
``no_sync`` (forward and backward), so DDP all-reduces once per step the gradients accumulated by
then, and passes that only read an input gradient run under ``no_sync`` too.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from asa_plugin.collectives import sum_across_processes  # noqa: F401 - re-exported: its old import path
from asa_plugin.errors import ConfigError, UserError


class TrainedModules(nn.Module):
    """The model plus the defence's trainable modules, as one module for ``accelerator.prepare``.

    ``forward`` is the model's; ``extras`` only registers the defence modules so that DDP
    synchronises them and checkpoints hold them. The export still saves the bare model.
    """

    def __init__(self, model: nn.Module, extras: list[nn.Module]):
        super().__init__()
        self.model = model
        self.extras = nn.ModuleList(extras)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


def check_mixed_precision(mixed_precision: str, device: torch.device, source: str) -> None:
    """fp16 autocast needs a GPU (its loss scaler is GPU-only); bf16 runs on CPU and GPU."""
    if mixed_precision == "fp16" and device.type == "cpu":
        raise ConfigError(f'{source}: train.mixed_precision = "fp16" needs a GPU; on CPU use "bf16" or "no"')


def check_process_group(num_processes: int) -> None:
    """A launcher that started several processes must get them into one group: on a machine
    without a GPU Accelerate forms a group only with ``ACCELERATE_USE_CPU=1``; without it every
    process would train alone and all would write the same run directory."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and num_processes == 1:
        raise UserError(f"launched as {launched} processes but they do not form one group; without a GPU "
                        f"set ACCELERATE_USE_CPU=1 (ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
                        f"--num_processes {launched} -m asa_plugin.cli train CONFIG)")


SHARED_TOKEN = ".advrobust-shared-check"
"""RUN_DIR/.advrobust-shared-check: the token rank 0 writes and every rank must read (removed after)."""


def check_shared_run_dir(accelerator, run_dir: Path) -> None:
    """Every process of a multi-node run must see one run directory: each writes its RNG state there and
    reads the checkpoints there, so a node with its own copy would resume at another step (mismatched
    collectives) or lose its state. Rank 0 writes a token; after a barrier every rank reads it; all
    ranks learn who could not, and each raises the same one line naming them, before any training.
    Every process must call this at the same point."""
    import torch.distributed as dist

    if accelerator.num_processes == 1 or not dist.is_initialized():
        return
    import secrets
    import socket

    path = Path(run_dir) / SHARED_TOKEN
    token = [(secrets.token_hex(8), str(path.parent.resolve())) if accelerator.is_main_process else None]
    if accelerator.is_main_process:
        path.write_text(token[0][0], encoding="utf-8")
    dist.broadcast_object_list(token, src=0)  # also the barrier: rank 0 has written before anyone reads
    secret, where = token[0]  # rank 0's run directory, as rank 0 sees it
    try:
        seen = path.read_text(encoding="utf-8") == secret
    except OSError:
        seen = False
    answers: list = [None] * dist.get_world_size()
    dist.all_gather_object(answers, (dist.get_rank(), socket.gethostname(), seen))
    if accelerator.is_main_process:
        path.unlink(missing_ok=True)  # every rank has read it: all_gather_object returned
    blind = [(rank, host) for rank, host, ok in answers if not ok]
    if blind:
        ranks = ", ".join(f"rank {rank} on {host}" for rank, host in blind)
        error = UserError(f"{ranks} cannot see the run directory {where} that rank 0 writes: every node must "
                          f"mount it at the same path (checkpoints, RNG states and --resume need it); put "
                          f"output.run_dir on storage every node shares (--set output.run_dir=/shared/...)")
        error.every_rank = True  # printed by every rank: each node's log says why it stopped
        raise error


def mean_across_processes(accelerator, value: float) -> float:
    """The mean of ``value`` over all processes (every process must call this at the same point)."""
    if accelerator.num_processes == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=accelerator.device)  # (1,)
    return accelerator.reduce(tensor, reduction="mean").item()


def local_batches(global_batches: int, num_processes: int) -> int:
    """Batches each process runs per epoch: Accelerate deals the batches round-robin and pads the
    last round with batches from the start of the epoch (``even_batches``)."""
    return math.ceil(global_batches / num_processes)


SUPPORTED_PARALLELISM = ("one process, or several with DDP (accelerate launch --multi_gpu, on CPU with "
                         "ACCELERATE_USE_CPU=1)")


def check_parallelism(accelerator, who: str = "", deepspeed: bool = False, fsdp: bool = False) -> None:
    """Refuse, in one line, the distributed modes the defences would silently get wrong.

    DeepSpeed: Accelerate steps the optimizer at every synced backward, and FGM, PGD and FreeLB
    back-propagate several times per step (they would take several optimizer steps). FSDP: the
    perturbation defences read the word-embedding weight outside the wrapped forward, where it is a
    shard, and the defences' own modules are outside the sharded model. ``deepspeed`` / ``fsdp``:
    asked for by the caller's own settings (e.g. ``TrainingArguments``) besides Accelerate's state
    (``accelerator`` None: those settings alone); ``who`` prefixes the line.
    """
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type if accelerator is not None else None
    if deepspeed or kind == DistributedType.DEEPSPEED:
        mode = "DeepSpeed (it steps the optimizer at every backward, and FGM/PGD/FreeLB back-propagate " \
               "several times per step)"
    elif fsdp or kind == DistributedType.FSDP:
        mode = "FSDP (the defences read the word embeddings and run modules outside the sharded model)"
    elif kind == DistributedType.MEGATRON_LM:
        mode = "Megatron-LM"
    else:
        return
    raise UserError(f"{who + ': ' if who else ''}{mode} is not supported; supported: {SUPPORTED_PARALLELISM}")


HOOKED_DEFENCES = ("asa",)
"""Defences that reach the model through forward hooks added per pass (ASA's attention bias)."""


def compiled(accelerator) -> bool:
    """Whether Accelerate will ``torch.compile`` the prepared model (``--dynamo_backend``, ``torch_compile``)."""
    from accelerate.utils import DynamoBackend

    plugin = getattr(accelerator.state, "dynamo_plugin", None)
    return plugin is not None and plugin.backend != DynamoBackend.NO


def check_compile(is_compiled: bool, names: list[str], who: str = "", fix: str = "") -> None:
    """A ``torch.compile``'d model runs the hooks it had when it was compiled (dynamo does not guard on
    module hooks): ASA's attention bias, hooked in per pass, would silently be left out. The
    embedding-perturbation defences and vanilla feed ``inputs_embeds`` and work compiled (tested)."""
    hooked = [n for n in names if n in HOOKED_DEFENCES]
    if is_compiled and hooked:
        raise UserError(f"{who + ': ' if who else ''}defence {hooked[0]} adds its attention bias through forward "
                        f"hooks, which a torch.compile'd model ignores; train it without torch.compile{fix} "
                        f"(compiled training is supported for vanilla, fgm, pgd, freelb, scal and uscal)")
