"""``--executor ray``: every ready cell a Ray task on a Ray cluster (``pip install 'asa-plugin[ray]'``).

Ray places each task by its ``num_cpus`` (``cell.threads``) and ``num_gpus`` (``bench.gpus_per_cell``);
a task whose worker dies is retried ``bench.retries`` times (the cell resumes). Nothing here assumes
what a cluster has, each is checked before the first cell:

- **Shared storage.** Every cell reads and writes ``bench.out_dir``; one probe task per alive node
  (pinned to it with a node-affinity strategy) reads a token the driver wrote into ``out_dir``. A node
  that cannot is one line naming it and the fix, before any work.
- **GPUs.** Ray hides the GPUs from a task that requests none: on a cluster with GPUs and
  ``bench.gpus_per_cell = 0``, training would silently run on CPU; the bench says so in one line.
- **Token authentication.** ``ray start --head`` enables token authentication when the head has a
  token in ``~/.ray/auth_token`` (Ray 2.60, measured; any ``ray.init()`` writes one); a driver without
  the cluster's token is refused (``InvalidAuthToken``, "RAY_AUTH_MODE is currently 'disabled'"): one
  line naming the fix instead of Ray's traceback after 20 s of retries.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from asa_plugin.bench.cells import GridCell
from asa_plugin.bench.executors import Executor, Finished, Log, one_line, run_cell_remote
from asa_plugin.errors import UserError

TOKEN_FILE = ".advrobust-ray-probe-{}"
"""OUT/.advrobust-ray-probe-<token>: the token each node's probe task must read (removed after the probe)."""
AUTH_FIX = ("the Ray cluster requires token authentication (Ray 2.60's `ray start` turns it on when the head has a "
            "token in ~/.ray/auth_token, which any ray.init() writes): run the bench with RAY_AUTH_MODE=token and "
            "the cluster's token (the head's ~/.ray/auth_token copied here, or RAY_AUTH_TOKEN_PATH / RAY_AUTH_TOKEN)")


def _probe(path: str) -> tuple[str, str | None]:
    """Body of a probe task: (this node's host name, the token it reads at ``path`` or None)."""
    try:
        token = Path(path).read_text(encoding="utf-8")
    except OSError:
        token = None
    return socket.gethostname(), token


class RayPool(Executor):
    """Every ready cell as a Ray task; Ray places them by their CPU/GPU requests."""

    capacity = 1 << 30  # Ray queues what does not fit

    def __init__(self, address: str | None = None, retries: int = 2, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise UserError("bench.executor = 'ray' needs Ray: pip install 'asa-plugin[ray]' (or pip install "
                            "'ray[default]'), or use --executor local") from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            connect(ray, address, num_cpus)
        self.retries = retries
        self.task = ray.remote(run_cell_remote)
        self.refs: dict[Any, tuple[GridCell, float, str]] = {}  # ref -> (cell, start, node when known)

    @classmethod
    def from_bench(cls, bench, settings: Any, progress: bool, log: Log) -> Executor:
        pool = cls(bench.ray_address, bench.retries, num_cpus=bench.ray_num_cpus)
        try:
            probe_nodes(pool.ray, Path(bench.out_dir))
            note = gpu_note(pool.ray.cluster_resources(), bench.gpus_per_cell)
        except BaseException:
            pool.close()
            raise
        if note:
            log(note)
        return pool

    @property
    def parallel(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))  # for the time-left estimate

    def describe(self) -> str:
        return "Ray (" + ", ".join(f"{v:g} {k}" for k, v in sorted(self.ray.cluster_resources().items())
                                   if k in ("CPU", "GPU")) + ")"

    def running(self) -> int:
        return len(self.refs)

    def submit(self, cell: GridCell) -> None:
        env = {k: v for k, v in os.environ.items() if k.startswith("ADVROBUST_")}
        options = {"num_cpus": cell.threads, "num_gpus": cell.gpus, "max_retries": self.retries,
                   "retry_exceptions": False, "name": cell.key}
        if env:
            options["runtime_env"] = {"env_vars": env}
        ref = self.task.options(**options).remote(cell)
        self.refs[ref] = (cell, time.perf_counter(), "")

    def wait(self) -> list[Finished]:
        from ray.exceptions import RayError

        ready, _ = self.ray.wait(list(self.refs), num_returns=1)
        finished = []
        for ref in ready:
            cell, start, _ = self.refs.pop(ref)
            try:
                ok, text, seconds = self.ray.get(ref)
            except RayError as exc:  # its worker died every time (killed, out of memory), or the node went away
                finished.append((cell, None, f"Ray gave up after {self.retries} retries: {one_line(exc)}",
                                 time.perf_counter() - start))
                continue
            finished.append((cell, text, None, seconds) if ok else (cell, None, text, time.perf_counter() - start))
        return finished

    def close(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)
        self.refs.clear()
        if self.started:
            self.ray.shutdown()
            self.started = False


def connect(ray, address: str | None, num_cpus: int | None) -> None:
    """``ray.init``: join the cluster at ``address`` (or start a local one of ``num_cpus`` CPUs); a cluster that
    wants token authentication from a driver without it is one line naming the fix."""
    try:
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 log_to_driver=True)
    except Exception as exc:  # noqa: BLE001 - Ray raises several types for one cause; the text tells them apart
        if _auth_refused(exc):
            raise UserError(f"Ray at {address}: {AUTH_FIX}") from None
        if address is not None and isinstance(exc, ConnectionError):
            raise UserError(f"Ray at {address}: no cluster answers ({one_line(exc)}); start one with `ray start "
                            f"--head` or fix bench.ray_address (--ray-address)") from None
        raise


def _auth_refused(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is the cluster refusing a driver without its token."""
    seen = 0
    while exc is not None and seen < 10:
        text = f"{type(exc).__name__} {exc}"
        if "InvalidAuthToken" in text or "RAY_AUTH_MODE" in text or "AuthenticationError" in text:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def probe_nodes(ray, out_dir: Path, timeout: float = 120.0) -> list[str]:
    """One task per alive node, pinned to it, reads a token the driver wrote into ``out_dir``; return the
    nodes' host names, or raise one line naming the first node that does not see it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    out_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    token_path = out_dir / TOKEN_FILE.format(token)
    token_path.write_text(token, encoding="utf-8")
    probe = ray.remote(_probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = {probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(str(token_path.resolve())): n for n in nodes}
    try:
        answers = {ref: ray.get(ref, timeout=timeout) for ref in refs}
    finally:
        token_path.unlink(missing_ok=True)
    for ref, (host, seen) in answers.items():
        if seen != token:
            node = refs[ref]
            raise UserError(f"Ray node {node.get('NodeManagerAddress', '?')} ({host}) does not see the bench's "
                            f"out_dir {out_dir.resolve()}: every node must mount it at the same path; put "
                            f"bench.out_dir on shared storage, or remove that node from the cluster")
    return [host for host, _ in answers.values()]


def gpu_note(resources: dict[str, float], gpus_per_cell: float) -> str | None:
    """One line when the cluster has GPUs that no cell will get (Ray hides GPUs from a task requesting none)."""
    gpus = resources.get("GPU", 0)
    if gpus and not gpus_per_cell:
        return (f"the Ray cluster has {gpus:g} GPUs but bench.gpus_per_cell = 0: Ray hides GPUs from tasks that "
                f"request none, so every cell runs on CPU; set bench.gpus_per_cell (e.g. --set "
                f"bench.gpus_per_cell=1) to use them")
    return None
