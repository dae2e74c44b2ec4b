"""Multi-node training needs one run directory that every rank sees: each rank checks it before any
training (rank 0 writes a token, every rank reads it after a barrier) and a rank that cannot see it is
one line on every rank. Two real processes in a gloo group; per-rank directories simulate two nodes
without shared storage."""

from __future__ import annotations

import os
import socket
import sys
import types
from pathlib import Path

import pytest
import torch.multiprocessing as mp


def _rank(rank: int, port: int, dirs: list[str], answers) -> None:
    import torch.distributed as dist

    from asa_plugin.errors import UserError
    from asa_plugin.training.distributed import check_shared_run_dir

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(dirs))
    accelerator = types.SimpleNamespace(num_processes=len(dirs), is_main_process=rank == 0)
    try:
        check_shared_run_dir(accelerator, Path(dirs[rank]))
        answers[rank] = "ok"
    except UserError as exc:
        answers[rank] = str(exc) if getattr(exc, "every_rank", False) else "rank 0 only"
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(dirs: list[Path]) -> list[str]:
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    answers = mp.Manager().dict()
    mp.start_processes(_rank, args=(free_port(), [str(d) for d in dirs], answers), nprocs=len(dirs),
                       start_method="spawn")
    return [answers[r] for r in range(len(dirs))]


@pytest.mark.skipif(sys.platform == "win32", reason="gloo over TCP")
def test_ranks_that_share_the_run_directory_pass_and_leave_nothing_behind(tmp_path):
    assert run_ranks([tmp_path / "run", tmp_path / "run"]) == ["ok", "ok"]
    assert os.listdir(tmp_path / "run") == []


@pytest.mark.skipif(sys.platform == "win32", reason="gloo over TCP")
def test_a_rank_with_its_own_copy_of_the_run_directory_is_one_line_on_every_rank(tmp_path):
    answers = run_ranks([tmp_path / "node0" / "run", tmp_path / "node1" / "run"])
    assert answers[0] == answers[1]  # the same line on every rank, naming the rank that cannot see it
    assert answers[0].startswith(f"rank 1 on {socket.gethostname()} cannot see the run directory "
                                 f"{(tmp_path / 'node0' / 'run').resolve()} that rank 0 writes")
    assert "\n" not in answers[0] and "--set output.run_dir=" in answers[0]
