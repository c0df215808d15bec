"""Fixtures for the inference image: a tiny SD saved once, a model store, rank launchers.

Multi-rank tests start real processes (one per rank) with RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT set, as the operator's pods get them, over gloo on loopback. Each rank uses one
thread (``EAT_INFER_THREADS=1``): the test machine has two cores shared by all ranks.

The modules that need torch/diffusers skip themselves (``pytest.importorskip``) in an
environment without the ``inference`` extra.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
for extra in (REPO / "inference_image", REPO / "policy"):
    if str(extra) not in sys.path:  # until the package is installed (pyproject extra `inference`)
        sys.path.insert(0, str(extra))

HERE = pathlib.Path(__file__).resolve().parent


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child process: our packages importable, one thread, quiet libraries."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EAT_INFER_", "EAT_NODE_AGENT_"))}
    paths = [str(REPO / "inference_image"), str(REPO / "policy"), str(HERE)]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(
        OMP_NUM_THREADS="1",
        EAT_INFER_THREADS="1",
        TRANSFORMERS_VERBOSITY="error",
        DIFFUSERS_VERBOSITY="error",
        HF_HUB_OFFLINE="1",
        PYTHONWARNINGS="ignore",
        TQDM_DISABLE="1",
    )
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class Finished:
    rank: int
    returncode: int
    stdout: str
    stderr: str
    elapsed_s: float


def launch(
    args: list[str], world_size: int, ranks: list[int] | None = None, timeout_s: float = 240.0, **env: str
) -> list[Finished]:
    """Start ``python <args>`` once per rank (all of ``range(world_size)`` unless ``ranks``), wait for all."""
    port = str(free_port())
    procs = []
    t0 = time.monotonic()
    for rank in range(world_size) if ranks is None else ranks:
        e = child_env(RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **env)
        p = subprocess.Popen([sys.executable, *args], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append((rank, p))
    out = []
    for rank, p in procs:
        try:
            stdout, stderr = p.communicate(timeout=max(1.0, timeout_s - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            for _, q in procs:
                q.kill()
            raise
        out.append(Finished(rank, p.returncode, stdout, stderr, time.monotonic() - t0))
    return out


def eat_infer(*args: str) -> list[str]:
    return ["-m", "eat_inference", *args]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The tiny SD in diffusers format, built once per session."""
    pytest.importorskip("diffusers")
    from eat_inference import tiny

    return tiny.save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_xl_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The tiny SDXL in diffusers format, built once per session."""
    pytest.importorskip("diffusers")
    from eat_inference import tiny

    return tiny.save_tiny_model(tmp_path_factory.mktemp("tiny-xl") / "tiny-xl", preset="tiny-xl")


def model_variant(
    model: pathlib.Path, dest: pathlib.Path, scheduler: str | None = None, vae: dict[str, Any] | None = None,
    unet: dict[str, Any] | None = None, **scheduler_config: Any,
) -> pathlib.Path:
    """A copy of a tiny model with another sampler class (and its config), VAE config entries
    or UNet config entries (the UNet then gets fresh seeded weights)."""
    import json
    import shutil

    import torch
    from diffusers import UNet2DConditionModel

    def edit(path: pathlib.Path, **entries: Any) -> None:
        path.write_text(json.dumps({**json.loads(path.read_text()), **entries}))

    shutil.copytree(model, dest)
    if scheduler is not None:  # diffusers picks the class from model_index.json
        edit(dest / "model_index.json", scheduler=["diffusers", scheduler])
        scheduler_config["_class_name"] = scheduler
    edit(dest / "scheduler" / "scheduler_config.json", **scheduler_config)
    edit(dest / "vae" / "config.json", **(vae or {}))
    if unet:
        torch.manual_seed(0)
        fresh = UNet2DConditionModel.from_config({**UNet2DConditionModel.load_config(dest / "unet"), **unet})
        shutil.rmtree(dest / "unet")
        fresh.save_pretrained(dest / "unet")
    return dest


@pytest.fixture(scope="session")
def tiny_store(tiny_model: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A model store directory holding the tiny model as tiny-sd.tar (+ .sha256)."""
    from eat_inference import cache

    store = tmp_path_factory.mktemp("store")
    cache.pack(tiny_model, store, "tiny-sd")
    return store


@dataclasses.dataclass
class S3Store:
    """A real S3-compatible store on loopback: Versity S3 Gateway over a directory."""

    endpoint: str
    access_key: str
    secret_key: str

    def client(self, secret_key: str | None = None) -> Any:
        from minio import Minio

        return Minio(self.endpoint.removeprefix("http://"), access_key=self.access_key,
                     secret_key=secret_key or self.secret_key, secure=False)

    def env(self, secret_key: str | None = None) -> dict[str, str]:
        """What an inference pod is given to upload there."""
        return {"EAT_INFER_S3_ENDPOINT": self.endpoint, "EAT_INFER_S3_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": secret_key or self.secret_key}


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Store]:
    binary = os.environ.get("EAT_VERSITYGW") or str(pathlib.Path.home() / ".cache/eat/versitygw-v1.8.0/versitygw")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"no S3 gateway at {binary}: run hack/s3/build.sh (hack/test.sh does) or set EAT_VERSITYGW")
    root, meta = tmp_path_factory.mktemp("s3"), tmp_path_factory.mktemp("s3-meta")  # meta: no xattrs needed
    port = free_port()
    store = S3Store(f"http://127.0.0.1:{port}", "eat-test", "eat-test-secret")
    log = open(root.parent / "versitygw.log", "wb")
    proc = subprocess.Popen([binary, "--access", store.access_key, "--secret", store.secret_key,
                             "--port", f"127.0.0.1:{port}", "posix", "--sidecar", str(meta), str(root)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"versitygw did not start (exit {proc.poll()}); see {log.name}")
        time.sleep(0.1)
    yield store
    proc.terminate()
    proc.wait(10)
    log.close()
