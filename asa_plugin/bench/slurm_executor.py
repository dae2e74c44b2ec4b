"""``--executor slurm``: every cell a SLURM job, submitted through submitit (``pip install 'asa-plugin[slurm]'``).

The bench process stays on the login node (or in a small job of its own) and walks the grid's
graph: it submits a cell's job once the jobs it needs have finished (a training's attacks when the
training's job ends), polls the jobs, resubmits a job that died without a result (preempted, killed,
out of memory, node failure) up to ``bench.retries`` times (the cell resumes from its checkpoint or
its last row), and records a cell's own error as its one-line FAILED line. A rerun skips the finished
cells (their outputs exist) and submits the rest. Each job's resources come from ``[bench.slurm]``:

.. code-block:: toml

    [bench.slurm]
    partition = "gpu"
    gpus_per_cell = 1      # training and attack jobs; merges and static-set evaluations get none
    cpus_per_cell = 4
    time_min = 120
    mem_gb = 32
    additional = {account = "my-lab", qos = "normal"}   # any other sbatch option

``cluster = "local"`` runs the same jobs as local processes through submitit's local executor (what
the test suite and ``benchmarks/grid_throughput.py`` use); ``cluster = "debug"`` runs them in the
bench's process. Job logs go to ``OUT/slurm/`` (``folder``).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from asa_plugin.bench.cells import GridCell
from asa_plugin.bench.executors import Executor, Finished, Log, one_line, run_cell_remote
from asa_plugin.errors import UserError
from asa_plugin.schema import option


@dataclass
class SlurmSettings:
    """``[bench.slurm]``: the resources and options of every cell's job."""

    cluster: Literal["slurm", "local", "debug"] = option(
        "slurm", help="slurm: sbatch; local: the same jobs as local processes (submitit's local executor); "
                      "debug: in the bench's process")
    partition: str | None = option(None, help="sbatch --partition (default: the cluster's)")
    cpus_per_cell: int = option(1, ge=1, help="sbatch --cpus-per-task of every job")
    gpus_per_cell: int = option(0, ge=0, help="GPUs of each training and attack job (merges and static-set "
                                              "evaluations get none)")
    time_min: int = option(60, ge=1, help="sbatch --time of every job, in minutes")
    mem_gb: float | None = option(None, gt=0, help="sbatch --mem of every job, in GB (default: the cluster's)")
    max_parallel: int = option(64, ge=1, help="jobs queued or running at once")
    folder: str | None = option(None, help="job scripts and logs (default: OUT/slurm)")
    setup: list[str] = option([], help="shell lines run before each job, e.g. [\"module load cuda\"]")
    additional: dict[str, Any] = option({}, help="any other sbatch option, e.g. {account = \"lab\", qos = \"high\"}")
    poll_s: float = option(5.0, gt=0, help="seconds between polls of the jobs' states")


def _submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("bench.executor = 'slurm' needs submitit: pip install 'asa-plugin[slurm]' (or pip install "
                        "submitit), or use --executor local") from None
    return submitit


class SlurmPool(Executor):
    """Every ready cell a submitit job (a SLURM job, or a local process with ``cluster = "local"``)."""

    settings = SlurmSettings

    def __init__(self, settings: SlurmSettings, folder: Path, retries: int = 2):
        submitit = _submitit()
        if settings.cluster == "slurm" and shutil.which("sbatch") is None:
            raise UserError("bench.executor = 'slurm': no SLURM here (sbatch is not on PATH); run the bench on a "
                            "SLURM login node, or set bench.slurm.cluster = \"local\" to run the jobs as local "
                            "processes")
        self.opts = settings
        self.capacity = settings.max_parallel
        self.retries = retries
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=settings.cluster)  # JOBID_* files
        self.jobs: dict[str, tuple[GridCell, Any, float, int]] = {}  # key -> (cell, job, start, attempt)

    @classmethod
    def from_bench(cls, bench, settings: Any, progress: bool, log: Log) -> Executor:
        settings = settings or SlurmSettings()
        folder = Path(settings.folder) if settings.folder else Path(bench.out_dir) / "slurm"
        return cls(settings, folder, bench.retries)

    def describe(self) -> str:
        where = {"slurm": "SLURM jobs", "local": "submitit local jobs", "debug": "submitit debug jobs"}
        opts = self.opts
        return (f"{where[opts.cluster]} (up to {self.capacity} at once, {opts.cpus_per_cell} CPUs"
                + (f", {opts.gpus_per_cell} GPUs" if opts.gpus_per_cell else "")
                + (f", partition {opts.partition}" if opts.partition else "") + f", {opts.time_min} min each)")

    def running(self) -> int:
        return len(self.jobs)

    def _parameters(self, cell: GridCell) -> dict[str, Any]:
        opts = self.opts
        gpus = opts.gpus_per_cell if cell.kind in ("train", "attack") else 0
        params: dict[str, Any] = {"name": f"advrobust {cell.key}", "timeout_min": opts.time_min,
                                  "cpus_per_task": opts.cpus_per_cell, "gpus_per_node": gpus,
                                  "slurm_setup": list(opts.setup),
                                  "slurm_additional_parameters": dict(opts.additional)}
        if opts.partition:
            params["slurm_partition"] = opts.partition
        if opts.mem_gb:
            params["mem_gb"] = opts.mem_gb
        return params

    def submit(self, cell: GridCell, attempt: int = 0) -> None:
        self.executor.update_parameters(**self._parameters(cell))
        try:
            job = self.executor.submit(run_cell_remote, cell)
        except Exception as exc:  # noqa: BLE001 - sbatch's refusal (bad partition, account...) as one line
            raise UserError(f"sbatch refused the job of {cell.key}: {one_line(exc)}; fix [bench.slurm] "
                            f"(partition, additional)") from None
        self.jobs[cell.key] = (cell, job, time.perf_counter(), attempt)

    def wait(self) -> list[Finished]:
        while True:
            ended = [key for key, (_, job, _, _) in self.jobs.items() if job.done()]
            if ended:
                break
            time.sleep(self.opts.poll_s)
        finished = []
        for key in ended:
            cell, job, start, attempt = self.jobs.pop(key)
            try:
                ok, text, seconds = job.result()
            except Exception as exc:  # noqa: BLE001 - the job died without a result: resubmit, it resumes
                if attempt < self.retries:
                    self.submit(cell, attempt + 1)
                    continue
                why = f"job {job.job_id} died ({job.state}): {one_line(exc)}"
                finished.append((cell, None, f"{why}; gave up after {self.retries} retries (bench.retries); "
                                             f"its log: {job.paths.stderr}", time.perf_counter() - start))
                continue
            finished.append((cell, text, None, seconds) if ok else (cell, None, text, time.perf_counter() - start))
        return finished or self.wait()

    def cancel(self) -> None:
        for _, job, _, _ in self.jobs.values():
            try:
                job.cancel(check=False)
            except Exception:  # noqa: BLE001, S110 - best effort: the job may have ended meanwhile
                pass
        self.jobs.clear()
