"""The line a training run prints before its first step."""

from __future__ import annotations


def describe_job(num_train: int, steps_per_epoch: int, total_steps: int, epochs: int, tc) -> str:
    """One line saying what a training run will do, printed before its first step."""
    every = tc.checkpoint_every_steps
    ckpt = f"a checkpoint every {every} steps and each epoch" if every else "a checkpoint each epoch"
    if total_steps < epochs * steps_per_epoch:  # train.max_steps ends it inside an epoch
        span = f"train.max_steps; an epoch is {steps_per_epoch} steps"
    else:
        span = f"{epochs} epoch{'s' if epochs != 1 else ''} of {steps_per_epoch} steps"
    return f"training {total_steps} steps ({span}; {num_train} examples, batch {tc.batch_size}); {ckpt}"
