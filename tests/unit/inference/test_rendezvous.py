"""The gang's rendezvous: the environment contract, and bounded, clear failure when a rank is missing."""

from __future__ import annotations

import pathlib

import pytest

pytest.importorskip("torch")

from eat_inference import rendezvous

from .conftest import eat_infer, launch

TIMEOUT_S = 6.0
SLACK_S = 25.0
"""Process start-up (importing torch) on a busy two-core machine, on top of the timeout."""


def test_env_defaults_to_one_rank() -> None:
    assert rendezvous.DistEnv.from_env({}) == rendezvous.DistEnv()


def test_env_reads_the_operator_contract() -> None:
    env = rendezvous.DistEnv.from_env(
        {"RANK": "2", "WORLD_SIZE": "4", "MASTER_ADDR": "job-0.job", "MASTER_PORT": "29555"}
    )
    assert (env.rank, env.world_size, env.master_addr, env.master_port) == (2, 4, "job-0.job", 29555)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param(
            {"RANK": "4", "WORLD_SIZE": "4", "MASTER_ADDR": "x"}, "RANK=4 is not in 0..3", id="rank-out-of-range"
        ),
        pytest.param({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR is not set", id="no-master"),
        pytest.param({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer", id="not-an-integer"),
        pytest.param(
            {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "70000"},
            "not a TCP port",
            id="bad-port",
        ),
    ],
)
def test_env_errors_are_clear(environ: dict[str, str], message: str) -> None:
    with pytest.raises(rendezvous.RendezvousError, match=message):
        rendezvous.DistEnv.from_env(environ)


def _run_args(tmp_path: pathlib.Path) -> list[str]:
    return eat_infer(
        "run", "--model-path", str(tmp_path / "unused"), "--output", str(tmp_path / "out"),
        "--rendezvous-timeout-s", str(TIMEOUT_S),
    )  # fmt: skip


def test_missing_rank_fails_every_rank_within_the_timeout(tmp_path: pathlib.Path) -> None:
    """World of 3, rank 2 never starts: ranks 0 and 1 exit 3 and say which rank is missing."""
    done = launch(_run_args(tmp_path), 3, ranks=[0, 1], timeout_s=TIMEOUT_S + SLACK_S + 30)
    for f in done:
        assert f.returncode == 3, f.stderr[-2000:]
        assert "timed out" in f.stderr and "2 of 3 ranks joined, missing rank(s) 2" in f.stderr, f.stderr[-2000:]
        assert f.elapsed_s < TIMEOUT_S + SLACK_S


def test_missing_rank_0_fails_the_others_within_the_timeout(tmp_path: pathlib.Path) -> None:
    done = launch(_run_args(tmp_path), 2, ranks=[1], timeout_s=TIMEOUT_S + SLACK_S + 30)
    (f,) = done
    assert f.returncode == 3, f.stderr[-2000:]
    assert "rank 1 could not reach rank 0's rendezvous at 127.0.0.1:" in f.stderr, f.stderr[-2000:]
    assert f.elapsed_s < TIMEOUT_S + SLACK_S


_LEAVE_AFTER_THE_PIPELINE = """
import os, torch, torch.distributed as dist
from eat_inference import rendezvous
rendezvous.join(rendezvous.DistEnv.from_env(), "gloo", timeout_s=60)
from eat_inference import pipeline  # as `eat-infer run` does: diffusers only once the gang is complete
out = [torch.empty(1) for _ in range(2)]
dist.all_gather(out, torch.ones(1))
rendezvous.leave()
print(sorted(n for n in (open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")) if "gloo" in n))
"""


def test_leave_ends_the_process_groups_threads_before_the_interpreter_exits() -> None:
    """Modules imported after the rendezvous must not keep the process group alive past leave().

    ``torch.distributed.nn.functional`` (pulled in by diffusers' imports) binds
    ``group.WORLD`` as default arguments when it is imported; imported after
    ``init_process_group``, it held the gloo group, whose threads then died in interpreter
    teardown, sometimes with SIGABRT ("terminate called without an active exception").
    """
    done = launch(["-c", _LEAVE_AFTER_THE_PIPELINE], 2, timeout_s=180)
    for f in done:
        assert f.returncode == 0, f.stderr[-2000:]
        assert f.stdout.strip().splitlines()[-1] == "[]", f"rank {f.rank}: gloo threads left after leave(): {f.stdout}"
