"""Test harness: ``python tests/kill_at_step.py STEP advrobust ARGS...`` runs the ``advrobust`` command ARGS
and SIGKILLs its process right after optimizer step STEP (a kill -9 at a known point of the run, for the
resume tests). Every process of an ``accelerate launch`` of it dies at that step, as each runs the callback.

The kill is a step callback (:mod:`asa_plugin.training.callbacks`) installed here: the training loop itself
holds no test hook.
"""

from __future__ import annotations

import os
import signal
import sys

from asa_plugin.cli import main
from asa_plugin.training.callbacks import StepEnd, add_step_callback


def kill_at(step: int):
    """A step callback that SIGKILLs this process once optimizer step ``step`` has finished."""

    def callback(end: StepEnd) -> None:
        if end.step == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return callback


if __name__ == "__main__":
    add_step_callback(kill_at(int(sys.argv[1])))
    sys.exit(main(sys.argv[2:]))
