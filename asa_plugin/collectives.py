"""Collective operations over the processes of a distributed run, for any layer that keeps per-process counts.

A utility below the defences (ASA's mask-ratio counters) and training (:mod:`asa_plugin.training.distributed`,
which re-exports :func:`sum_across_processes`); it imports torch and, in a distributed run only, accelerate.
"""

from __future__ import annotations

import torch


def sum_across_processes(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``values`` over the processes of a distributed run (itself otherwise).

    Every process must call it at the same point; used for counters kept per process.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    from accelerate import PartialState

    summed = values.to(PartialState().device)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed.to(values.device)
