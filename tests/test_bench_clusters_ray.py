"""The ray executor on a real Ray cluster: a head started by ``ray start --head`` and a second node by
``ray start --address`` (1 CPU each), driven by ``advrobust bench --ray-address`` in its own process.

Ray 2.60's ``ray start`` enables token authentication when the head has a token in ``~/.ray/auth_token`` (as
after any ``ray.init()``): a driver without it (a HOME without the token, no ``RAY_AUTH_MODE=token``) is one
line naming the fix. Every node is
probed for the bench's out_dir before any cell (a node started in a mount namespace where out_dir's
folder is an empty tmpfs plays a node without the shared disk); a cluster with GPUs and
``gpus_per_cell = 0`` is said; a cell whose worker is SIGKILLed is a FAILED line and failures.json,
and the rerun finishes the grid.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from asa_plugin.attacks.runner import KILL_AFTER_ENV
from test_bench_clusters import config, report, rows

RAY = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
pytestmark = pytest.mark.skipif(not Path(RAY).exists() or sys.platform != "linux",
                                reason="needs the ray CLI (pip install 'asa-plugin[ray]') and Linux")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_node(args: list[str], home: Path, wrap: list[str] | None = None) -> subprocess.Popen:
    """``ray start ... --block`` in a process group of its own (stopped by its id, never `ray stop`), with its
    own HOME (the cluster's token in HOME/.ray/auth_token, not the user's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    log = (home / f"ray-start-{len(list(home.glob('ray-start-*')))}.log").open("w")
    proc = subprocess.Popen([*(wrap or []), RAY, "start", "--num-cpus=1", "--block", "--disable-usage-stats",
                             *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**env, "HOME": str(home), "RAY_AUTH_MODE": "token"})  # a joining node needs it
    proc.log_path = Path(log.name)
    return proc


def stop_node(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


WAIT = """
import sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + 240
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(1)
print(sum(n["Alive"] for n in ray.nodes()))
"""


def driver_env(home: Path, auth: bool = True) -> dict[str, str]:
    """A driver's environment: with the cluster's token and RAY_AUTH_MODE=token, or with neither (a machine
    the token was never copied to)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    if auth:
        return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(home / ".ray" / "auth_token")}
    bare = home.parent / "no-token-home"
    bare.mkdir(exist_ok=True)
    return {**env, "HOME": str(bare)}


def wait_for_nodes(cluster: tuple[str, Path], count: int, procs: list[subprocess.Popen]) -> None:
    """Until the cluster has ``count`` alive nodes (the head may still be starting)."""
    address, home = cluster
    deadline = time.monotonic() + 300
    while True:
        dead = [p for p in procs if p.poll() is not None]
        assert not dead, f"a ray node did not start: {dead[0].log_path.read_text()[-3000:]}"
        done = subprocess.run([sys.executable, "-c", WAIT, address, str(count)], capture_output=True, text=True,
                              timeout=400, env=driver_env(home))
        if done.returncode == 0 and int(done.stdout.split()[-1]) >= count:
            return
        assert time.monotonic() < deadline, f"the Ray cluster at {address} never had {count} nodes: {done.stderr}"
        time.sleep(2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(address, HOME of its nodes): a head (1 CPU) and a second node (1 CPU, 1 declared GPU); stopped by process
    group at the end."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp = tmp_path_factory.mktemp("ray")
    home = tmp_path_factory.mktemp("home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))  # as a first ray.init() on the head writes
    procs = [start_node(["--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false"], home)]
    try:
        wait_for_nodes((address, home), 1, procs)
        procs.append(start_node([f"--address={address}", "--num-gpus=1"], home))
        wait_for_nodes((address, home), 2, procs)
        yield address, home
    finally:
        for proc in reversed(procs):
            stop_node(proc)


def bench(cfg: Path, cluster: tuple[str, Path], *flags: str, auth: bool = True, env: dict | None = None):
    address, home = cluster
    return subprocess.run([sys.executable, "-m", "asa_plugin.cli", "bench", str(cfg), "--no-progress",
                           "--executor", "ray", "--ray-address", address, *flags],
                          capture_output=True, text=True, timeout=900, env={**driver_env(home, auth), **(env or {})})


def test_a_driver_without_token_auth_is_one_line_naming_ray_auth_mode(cluster, tmp_path, tiny_bert_dir, toy_data,
                                                                       attack_cache):
    done = bench(config(tmp_path, tiny_bert_dir, toy_data, attack_cache), cluster, auth=False)
    errors = [line for line in done.stderr.splitlines() if line.startswith(("advrobust bench: error:", "Traceback"))]
    assert done.returncode == 2 and errors == [
        f"advrobust bench: error: Ray at {cluster[0]}: the Ray cluster requires token authentication (Ray 2.60's "
        f"`ray start` turns it on when the head has a token in ~/.ray/auth_token, which any ray.init() writes): run "
        f"the bench with RAY_AUTH_MODE=token and the cluster's token (the head's ~/.ray/auth_token copied here, or "
        f"RAY_AUTH_TOKEN_PATH / RAY_AUTH_TOKEN)"], done.stderr[-3000:]


def test_the_grid_runs_on_two_nodes_a_killed_cell_is_a_failed_line_and_the_rerun_finishes(
        cluster, tmp_path, tiny_bert_dir, toy_data, attack_cache):
    cfg = config(tmp_path, tiny_bert_dir, toy_data, attack_cache, retries=0)
    out = tmp_path / "out"
    done = bench(cfg, cluster, env={KILL_AFTER_ENV: "1"})  # the attack's worker SIGKILLs itself after a row
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[bench] the Ray cluster has 1 GPUs but bench.gpus_per_cell = 0: Ray hides GPUs from tasks" in done.stdout
    assert "to run on Ray (2 CPU, 1 GPU)" in done.stdout
    # Found anywhere in a line: Ray forwards its raylet's warnings to the driver's stdout without a final
    # newline (e.g. "A worker died or was killed ..."), so the bench's line may follow one on the same line.
    failed = re.findall(r"\[bench\] FAILED [^\n]*", done.stdout)
    assert len(failed) == 1 and failed[0].startswith("[bench] FAILED attack vanilla/deepwordbug: Ray gave up "
                                                     "after 0 retries: "), done.stdout
    assert list(json.loads((out / "failures.json").read_text())) == ["attack vanilla/deepwordbug"]
    done = bench(cfg, cluster)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert report(out)["missing"] == [] and not (out / "failures.json").exists()
    assert sorted(r["index"] for r in rows(out, "vanilla")) == [0, 1, 2]
    assert not [p for p in out.iterdir() if p.name.startswith(".advrobust-ray-probe")]  # the probe's token is gone


def test_a_node_that_does_not_see_the_out_dir_is_one_line_naming_it_before_any_cell(cluster, tmp_path, tiny_bert_dir,
                                                                                    toy_data, attack_cache):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs unshare -m (a private mount namespace) to play a node without the shared disk")
    cfg = config(tmp_path, tiny_bert_dir, toy_data, attack_cache)
    out = tmp_path / "out"
    out.mkdir()
    # A third node whose view of tmp_path is an empty tmpfs: it cannot see out_dir.
    mount = f"mount -t tmpfs none {tmp_path} && exec \"$@\""
    blind = start_node([f"--address={cluster[0]}"], cluster[1],
                       wrap=["unshare", "-m", "--propagation", "private", "sh", "-c", mount, "sh"])
    try:
        wait_for_nodes(cluster, 3, [blind])
        done = bench(cfg, cluster)
    finally:
        stop_node(blind)
    errors = [line for line in done.stderr.splitlines() if line.startswith(("advrobust bench: error:", "Traceback"))]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith("advrobust bench: error: Ray node ")  # the node's address, then its host
    assert f" ({socket.gethostname()}) does not see" in errors[0]
    assert errors[0].endswith(f"does not see the bench's out_dir {out.resolve()}: every node must mount it at the "
                              f"same path; put bench.out_dir on shared storage, or remove that node from the cluster")
    assert not (out / "runs").exists()  # nothing ran
