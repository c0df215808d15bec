"""One job, one rank: rendezvous → model from the cache → patch-parallel image → report.

This is what an inference pod runs (``eat-infer run``). Each phase is logged with its
duration. Rank 0 writes ``image.png`` and ``report.json`` to the output directory, both
atomically (temporary name, then rename), so a reader never sees half a file.

Exit codes (the operator tells them apart in the pod status):
0 done; 2 bad input; 3 rendezvous failed (a rank missing, rank 0 unreachable);
4 the model could not be had (store unreachable, not found, checksum mismatch, cache full);
5 another rank failed; 6 the image could not be written or uploaded to the job's output;
1 anything else (a bug).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import logging
import os
import pathlib
import statistics
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from eat_inference import cache, rendezvous, settings, upload

if TYPE_CHECKING:
    from eat_inference import pipeline

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_BUG, EXIT_INPUT, EXIT_RENDEZVOUS, EXIT_MODEL, EXIT_PEER, EXIT_OUTPUT = 0, 1, 2, 3, 4, 5, 6


@dataclasses.dataclass(frozen=True)
class RankInfo:
    """What each rank tells rank 0 for the report."""

    rank: int
    host: str
    device: str
    cache: str
    """disk (warm), store (cold) or path (loaded from --model-path)."""
    fetch_s: float
    lock_wait_s: float
    load_s: float
    step_s: list[float]


def run(cfg: settings.InferSettings, env: rendezvous.DistEnv | None = None) -> dict[str, Any]:
    """Produce the image; return the report (on every rank; only rank 0 writes it)."""
    started_at = time.time()
    t_start = time.perf_counter()
    env = env or rendezvous.DistEnv.from_env()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg, env)
    dtype = _dtype(cfg, device)
    backend = rendezvous.default_backend(device)

    # 1. Rendezvous: fail fast when a rank is missing, before fetching gigabytes
    t0 = time.perf_counter()
    store = rendezvous.join(env, backend, cfg.rendezvous_timeout_s, cfg.op_timeout_s)
    rendezvous_s = time.perf_counter() - t0
    logger.info("rank %d/%d joined in %.2f s (%s, %s)", env.rank, env.world_size, rendezvous_s, backend, device)
    # diffusers takes seconds to import: only once the gang is known to be complete.
    from eat_inference import pipeline

    try:
        # 2. Model: cache hit, or fetch from the store; then load, held against eviction
        try:
            with _model(cfg) as (path, fetched, model_cache):
                t0 = time.perf_counter()
                parallel = pipeline.Parallel(
                    mode=cfg.mode,
                    rank=env.rank,
                    world_size=env.world_size,
                    warmup_steps=cfg.warmup_steps,
                    comm_buckets=cfg.comm_buckets,
                )
                try:
                    pp = pipeline.PatchParallelPipeline.from_pretrained(str(path), parallel, device, dtype)
                except OSError as e:  # a file of the model is missing or unreadable: not bad input
                    raise cache.CacheError(f"model {cfg.model} does not load from {path}: {e}") from e
                load_s = time.perf_counter() - t0
            if model_cache is not None:
                model_cache.record_load(cfg.model, load_s + (fetched.fetch_s if fetched else 0.0))
        except Exception as e:  # any failure: the other ranks must not wait out the load timeout for us
            if isinstance(e.__cause__, OSError) and cfg.model_path is None:  # a cached copy that does not load
                cache.ModelCache(cfg.cache_dir, cfg.cache_capacity_bytes, cfg.lock_timeout_s).evict(cfg.model)
            rendezvous.barrier(store, env, "loaded", cfg.load_timeout_s, error=f"{type(e).__name__}: {e}")
            raise
        logger.info(
            "model %s ready in %.2f s (%s; fetch %.2f s, load %.2f s)",
            cfg.model,
            (fetched.fetch_s if fetched else 0.0) + load_s,
            fetched.source if fetched else "path",
            fetched.fetch_s if fetched else 0.0,
            load_s,
        )
        rendezvous.barrier(store, env, "loaded", cfg.load_timeout_s)

        # 3. The image
        with _resident(cfg, device):
            result = pp(
                cfg.prompt,
                negative_prompt=cfg.negative_prompt,
                height=cfg.height,
                width=cfg.width,
                num_inference_steps=cfg.steps,
                guidance_scale=cfg.guidance_scale,
                seed=cfg.seed,
            )
        logger.info("image done in %.2f s (median step %.3f s)", result.total_s, statistics.median(result.step_s))

        # 4. Report (rank 0)
        mine = RankInfo(
            rank=env.rank,
            host=os.uname().nodename,
            device=str(device),
            cache=fetched.source if fetched else "path",
            fetch_s=fetched.fetch_s if fetched else 0.0,
            lock_wait_s=fetched.lock_wait_s if fetched else 0.0,
            load_s=load_s,
            step_s=result.step_s,
        )
        ranks = _gather(mine, env)
        report = _report(cfg, env, backend, device, dtype, pp, result, ranks, rendezvous_s, started_at, t_start)
        if env.rank == 0:
            assert result.image is not None
            try:
                _write_outputs(cfg.output, result.image, report, cfg.save_array)
            except OSError as e:  # a full or read-only output volume: the job's output, not a bug
                raise upload.OutputError(f"cannot write the image to {cfg.output}: {e}") from e
            logger.info("wrote %s", cfg.output / "image.png")
            if cfg.output_uri:
                upload.put_image(cfg, cfg.output / "image.png")
        return report
    finally:
        rendezvous.leave()


@contextlib.contextmanager
def _model(
    cfg: settings.InferSettings,
) -> Iterator[tuple[pathlib.Path, cache.Fetched | None, cache.ModelCache | None]]:
    if cfg.model_path is not None:
        if not (cfg.model_path / "model_index.json").is_file():
            raise cache.CacheError(
                f"--model-path {cfg.model_path} is not a diffusers model folder (no model_index.json)"
            )
        yield cfg.model_path, None, None
        return
    model_cache = cache.ModelCache(cfg.cache_dir, cfg.cache_capacity_bytes, cfg.lock_timeout_s)
    store = cache.store_from_uri(cfg.store, cfg.store_timeout_s) if cfg.store else None
    with model_cache.in_use(cfg.model):
        fetched = model_cache.ensure(cfg.model, store, cfg.expected_sha256)
        yield fetched.path, fetched, model_cache


@contextlib.contextmanager
def _resident(cfg: settings.InferSettings, device: torch.device) -> Iterator[None]:
    """Advertise, for the node agent, that this process holds the model in device memory.

    A file under ``<cache>/resident/`` locked for as long as the image is being made; the
    agent counts files whose lock is held (flock works across the pods sharing the hostPath).
    """
    if cfg.model_path is not None:
        yield
        return
    d = cfg.cache_dir / "resident"
    d.mkdir(parents=True, exist_ok=True)
    gpu = str(device.index or 0) if device.type == "cuda" else device.type
    path = d / f"{cache.key_of(cfg.model)}.{os.getpid()}.{os.uname().nodename}.json"
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps({"model": cfg.model, "gpu": gpu}))
        f.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            fcntl.flock(f, fcntl.LOCK_UN)


def _gather(mine: RankInfo, env: rendezvous.DistEnv) -> list[RankInfo]:
    if env.world_size == 1:
        return [mine]
    out: list[RankInfo | None] = [None] * env.world_size
    dist.all_gather_object(out, mine)
    return [r for r in out if r is not None]


def _report(
    cfg: settings.InferSettings,
    env: rendezvous.DistEnv,
    backend: str,
    device: torch.device,
    dtype: torch.dtype,
    pp: pipeline.PatchParallelPipeline,
    result: pipeline.Result,
    ranks: list[RankInfo],
    rendezvous_s: float,
    started_at: float,
    t_start: float,
) -> dict[str, Any]:
    pipe = pp.pipe
    height = cfg.height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = cfg.width or pipe.unet.config.sample_size * pipe.vae_scale_factor
    cold = any(r.cache == "store" for r in ranks)
    denoise_s = sum(result.step_s)
    return {
        "job": cfg.job,
        "model": cfg.model,
        "mode": cfg.mode if env.world_size > 1 else "single",
        "requested_mode": cfg.mode,
        "world_size": env.world_size,
        "warmup_steps": min(cfg.warmup_steps, cfg.steps) if cfg.mode == "displaced" and env.world_size > 1 else None,
        "backend": backend if env.world_size > 1 else None,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "prompt": cfg.prompt,
        "height": height,
        "width": width,
        "steps": cfg.steps,
        "guidance_scale": cfg.guidance_scale,
        "seed": cfg.seed,
        "start": "cold" if cold else "warm",
        "cache": "store" if cold else ("path" if cfg.model_path is not None else "disk"),
        "timings_s": {
            "rendezvous": rendezvous_s,
            "fetch": max(r.fetch_s for r in ranks),
            "lock_wait": max(r.lock_wait_s for r in ranks),
            "load": max(r.load_s for r in ranks),
            "encode": result.encode_s,
            "denoise": denoise_s,
            "decode": result.decode_s,
            "step_median": statistics.median(result.step_s),
            "steps": result.step_s,
            "total": time.perf_counter() - t_start,
        },
        "exchange_bytes_per_step": result.exchange_bytes_per_step,
        "ranks": [dataclasses.asdict(r) for r in ranks],
        "image": "image.png",
        "started_at": _iso(started_at),
        "finished_at": _iso(time.time()),
    }


def _write_outputs(out: pathlib.Path, image: np.ndarray, report: dict[str, Any], save_array: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)

    def atomic(name: str, write: Any) -> None:
        tmp = out / f".{name}.{os.getpid()}.tmp"
        write(tmp)
        os.replace(tmp, out / name)

    pil = Image.fromarray((image * 255).round().clip(0, 255).astype(np.uint8))
    atomic("image.png", lambda p: pil.save(p, format="PNG"))
    if save_array:
        atomic("image.npy", lambda p: np.save(open(p, "wb"), image))
    atomic("report.json", lambda p: p.write_text(json.dumps(report, indent=2) + "\n"))


def _device(cfg: settings.InferSettings, env: rendezvous.DistEnv) -> torch.device:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda, but no GPU is visible to this process")
    index = env.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _dtype(cfg: settings.InferSettings, device: torch.device) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[cfg.dtype]


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="milliseconds")
