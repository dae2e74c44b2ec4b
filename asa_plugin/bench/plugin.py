"""The built-in executors of ``advrobust bench``, registered through the same hook a third-party
package uses (``advrobust_register_executors``)."""

from __future__ import annotations

from asa_plugin.hookspecs import Register, hookimpl


@hookimpl
def advrobust_register_executors(register: Register) -> None:
    from asa_plugin.bench.executors import ProcessPool
    from asa_plugin.bench.ray_executor import RayPool
    from asa_plugin.bench.slurm_executor import SlurmPool

    register("local", ProcessPool)  # max_parallel = 1: InlinePool, the cells in the bench's process
    register("ray", RayPool)
    register("slurm", SlurmPool)
