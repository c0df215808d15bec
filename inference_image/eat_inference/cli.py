"""The ``eat-infer`` and ``eat-node-agent`` commands: wiring only.

``eat-infer run`` is what an inference pod runs (settings from ``EAT_INFER_*``, options
override them, rendezvous from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT); its exit code says
what failed (see :mod:`eat_inference.running`). ``make-tiny-model`` and ``pack-model``
build a model and a store for tests and the demo; ``fetch`` fills the cache by hand.
"""

from __future__ import annotations

import logging
import pathlib
import sys
from typing import Annotated, Any

import typer

from eat_inference import cache, settings

app = typer.Typer(
    name="eat-infer", help="Patch-parallel Stable Diffusion for EAT.", no_args_is_help=True, add_completion=False
)
agent_app = typer.Typer(
    name="eat-node-agent", help="EAT node agent: model-cache metrics and pre-warming.", add_completion=False
)

_log = logging.getLogger("eat_inference")


def _logging(rank: int | None = None) -> None:
    prefix = f"rank {rank} " if rank is not None else ""
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def _fail(code: int, message: str) -> typer.Exit:
    typer.echo(f"eat-infer: error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def run(
    model: Annotated[str | None, typer.Option(help="Model name in the cache / store.")] = None,
    model_path: Annotated[
        pathlib.Path | None, typer.Option(help="Load this diffusers folder directly (no cache).")
    ] = None,
    store: Annotated[str | None, typer.Option(help="Model store: directory, file://, http(s):// URL.")] = None,
    cache_dir: Annotated[pathlib.Path | None, typer.Option(help="Node-local model cache directory.")] = None,
    cache_capacity_bytes: Annotated[int | None, typer.Option(help="Cache capacity in bytes (LRU beyond).")] = None,
    expected_sha256: Annotated[str | None, typer.Option(help="sha256 of the model archive.")] = None,
    prompt: Annotated[str | None, typer.Option()] = None,
    negative_prompt: Annotated[str | None, typer.Option()] = None,
    height: Annotated[int | None, typer.Option(help="Pixels; default: the model's size.")] = None,
    width: Annotated[int | None, typer.Option(help="Pixels; default: the model's size.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    guidance_scale: Annotated[float | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    mode: Annotated[str | None, typer.Option(help="sync, displaced, naive or cfg.")] = None,
    warmup_steps: Annotated[int | None, typer.Option(help="Synchronous steps before displaced ones.")] = None,
    output: Annotated[
        pathlib.Path | None, typer.Option(help="Directory for image.png and report.json (rank 0).")
    ] = None,
    output_uri: Annotated[
        str | None, typer.Option(help="s3://bucket/key: also upload the image there (rank 0).")
    ] = None,
    save_array: Annotated[bool | None, typer.Option(help="Also write image.npy (float32).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, float16 or bfloat16.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch intra-op threads.")] = None,
    rendezvous_timeout_s: Annotated[float | None, typer.Option(help="Bound on assembling the gang.")] = None,
    job: Annotated[str | None, typer.Option(help="Job identity for the report.")] = None,
) -> None:
    """Make one image as one rank of a gang (WORLD_SIZE ranks, one per pod)."""
    import pydantic

    from eat_inference import rendezvous, running, upload

    overrides: dict[str, Any] = {
        k: v for k, v in locals().items() if v is not None and k not in ("pydantic", "rendezvous", "running", "upload")
    }
    try:
        env = rendezvous.DistEnv.from_env()
    except rendezvous.RendezvousError as e:
        raise _fail(running.EXIT_RENDEZVOUS, str(e)) from None
    _logging(env.rank if env.world_size > 1 else None)
    try:
        cfg = settings.InferSettings(**overrides)
    except pydantic.ValidationError as e:
        raise _fail(running.EXIT_INPUT, f"invalid settings: {e}") from None
    try:
        report = running.run(cfg, env)
    except rendezvous.RendezvousError as e:
        raise _fail(running.EXIT_RENDEZVOUS, f"rank {env.rank}: {e}") from None
    except rendezvous.PeerFailedError as e:
        raise _fail(running.EXIT_PEER, f"rank {env.rank}: {e}") from None
    except cache.CacheError as e:
        raise _fail(running.EXIT_MODEL, f"rank {env.rank}: {e}") from None
    except upload.OutputError as e:
        raise _fail(running.EXIT_OUTPUT, f"rank {env.rank}: {e}") from None
    except ValueError as e:
        raise _fail(running.EXIT_INPUT, f"rank {env.rank}: {e}") from None
    except RuntimeError as e:
        # A collective that failed because a peer died mid-image (gloo/NCCL raise RuntimeError).
        if "connection" in str(e).lower() or "timed out" in str(e).lower() or "timeout" in str(e).lower():
            raise _fail(running.EXIT_PEER, f"rank {env.rank}: lost a peer during the image: {e}") from None
        raise
    if env.rank == 0:
        t = report["timings_s"]
        typer.echo(
            f"{cfg.output / 'image.png'}: {report['mode']} × {report['world_size']}, {report['start']} start, "
            f"fetch {t['fetch']:.2f} s, load {t['load']:.2f} s, step {t['step_median'] * 1000:.1f} ms, total {t['total']:.2f} s"
        )


@app.command("make-tiny-model")
def make_tiny_model(
    directory: Annotated[pathlib.Path, typer.Argument(help="Where to save the model (diffusers format).")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    preset: Annotated[str, typer.Option(help="tiny (SD 1.x's structure) or tiny-xl (SDXL's).")] = "tiny",
) -> None:
    """Build a tiny Stable Diffusion (UNet, VAE, CLIP text encoder, tokenizer) with random weights."""
    from eat_inference import tiny

    if preset not in ("tiny", "tiny-xl"):
        raise typer.BadParameter(f"must be tiny or tiny-xl, got {preset!r}", param_hint="--preset")
    path = tiny.save_tiny_model(directory, seed, preset)
    typer.echo(str(path))


@app.command("pack-model")
def pack_model(
    directory: Annotated[pathlib.Path, typer.Argument(help="A diffusers model folder.")],
    store: Annotated[pathlib.Path, typer.Argument(help="Store directory to write <name>.tar and .sha256 into.")],
    name: Annotated[str, typer.Option(help="Model name in the store.")],
) -> None:
    """Pack a model folder into a model store (tar + sha256)."""
    try:
        out = cache.pack(directory, store, name)
    except cache.CacheError as e:
        raise _fail(4, str(e)) from None
    typer.echo(str(out))


@app.command()
def fetch(
    model: Annotated[str, typer.Argument(help="Model name.")],
    store: Annotated[str | None, typer.Option(help="Model store.")] = None,
    cache_dir: Annotated[pathlib.Path | None, typer.Option()] = None,
    cache_capacity_bytes: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Make sure a model is in the node's cache (fetch it from the store on a miss)."""
    _logging()
    overrides: dict[str, Any] = {
        k: v
        for k, v in {"store": store, "cache_dir": cache_dir, "cache_capacity_bytes": cache_capacity_bytes}.items()
        if v is not None
    }
    cfg = settings.InferSettings(**overrides)
    model_cache = cache.ModelCache(cfg.cache_dir, cfg.cache_capacity_bytes, cfg.lock_timeout_s)
    try:
        fetched = model_cache.ensure(model, cache.store_from_uri(cfg.store, cfg.store_timeout_s) if cfg.store else None)
    except cache.CacheError as e:
        raise _fail(4, str(e)) from None
    typer.echo(f"{fetched.path} ({fetched.source}, {fetched.bytes} bytes, fetch {fetched.fetch_s:.2f} s)")


@agent_app.command()
def serve(
    port: Annotated[int | None, typer.Option(help="HTTP port (default: EAT_NODE_AGENT_PORT or 9101).")] = None,
    host: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Serve /metrics and the pre-warm API for this node's model cache."""
    import uvicorn

    from eat_inference import node_agent

    _logging()
    cfg = node_agent.get_settings()
    uvicorn.run(node_agent.app, host=host or cfg.host, port=port or cfg.port, log_level="info")


def agent_main() -> None:
    """Entry point of ``eat-node-agent``."""
    agent_app()
