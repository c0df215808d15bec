"""Patch-parallel inference: time per denoising step, per rank count and patch mode.

Each configuration runs as real processes (one per rank, gloo on CPU / NCCL on GPU, as the
inference pods do) that make the same image ``--runs`` times; a rank's step time is the
median over the displaced steps of a run (all steps when there are no displaced ones), and
the figure printed is the median over runs, per rank. Also printed: the speed-up against
one rank and the PSNR of the image against the single-rank image (inf: identical).

CPU default: the tiny random SD (64×64 px), one thread per rank (``--preset tiny-xl``: the
tiny SDXL). On a GPU machine: ``--preset sd15 --device cuda --resolutions 512 1024 1440``
times an SD-1.5-sized UNet, ``--preset sdxl --device cuda --resolutions 1024 1280`` an
SDXL-sized one (random weights, built on the GPU); those figures calibrate the simulator's
per-step latency model. Heights must split into whole rows at the UNet's coarsest level (a
multiple of 64·ranks px for SD 1.5, 32·ranks px for SDXL).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
PATHS = [str(REPO / "inference_image"), str(REPO / "policy")]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny", choices=["tiny", "sd15", "tiny-xl", "sdxl"],
                   help="random-weight model: SD 1.x or SDXL structure, toy or real size")
    p.add_argument("--model", help="a diffusers folder instead of a preset")
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--modes", nargs="+", default=["sync", "displaced", "naive", "cfg"])
    p.add_argument("--resolutions", type=int, nargs="+", default=None, help="px (square); default: the model's")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="synchronous steps in displaced mode")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank (CPU)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--resolution", type=int, help=argparse.SUPPRESS)
    return p.parse_args()


# --- one rank ---------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist
    from eat_inference import pipeline, rendezvous, tiny

    torch.set_num_threads(args.threads)
    env = rendezvous.DistEnv.from_env()
    device = (
        torch.device("cuda", env.local_rank % max(1, torch.cuda.device_count()))
        if args.device == "cuda"
        else torch.device("cpu")
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rendezvous.join(env, rendezvous.default_backend(device), timeout_s=120)
    parallel = pipeline.Parallel(mode=args.mode, rank=env.rank, world_size=env.world_size, warmup_steps=args.warmup)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if args.model:
        pp = pipeline.PatchParallelPipeline.from_pretrained(args.model, parallel, device, dtype)
    else:
        with device:  # random weights made where they run: SDXL's 2.6 B would take minutes on the CPU
            pp = pipeline.PatchParallelPipeline(tiny.make_pipeline(0, args.preset).to(device, dtype), parallel)
    res = args.resolution
    medians, image = [], None
    for _ in range(args.runs + 1):  # the first run warms up kernels and allocators
        result = pp("a photo of a cat", height=res, width=res, num_inference_steps=args.steps, seed=1)
        displaced = result.step_s[args.warmup :] if args.mode == "displaced" and env.world_size > 1 else result.step_s
        medians.append(statistics.median(displaced or result.step_s))
        image = result.image
    mine = statistics.median(medians[1:])
    per_rank: list[float | None] = [None] * env.world_size
    if env.world_size > 1:
        dist.all_gather_object(per_rank, mine)
    else:
        per_rank = [mine]
    if env.rank == 0:
        assert image is not None
        np.save(os.environ["BENCH_IMAGE"], image)
        print(json.dumps({"step_s": per_rank, "exchange_bytes": result.exchange_bytes_per_step}))
    rendezvous.leave()


# --- the driver -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(args: argparse.Namespace, world: int, mode: str, res: int, image: pathlib.Path) -> dict[str, object] | None:
    port = str(free_port())
    cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--resolution", str(res), "--preset", args.preset,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--runs", str(args.runs), "--device", args.device,
           "--threads", str(args.threads)] + (["--model", args.model] if args.model else [])  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(PATHS + [os.environ.get("PYTHONPATH", "")]), BENCH_IMAGE=str(image),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE=str(world), OMP_NUM_THREADS=str(args.threads),
               TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error", PYTHONWARNINGS="ignore")  # fmt: skip
    procs = [
        subprocess.Popen(
            cmd,
            env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    outs = [p.communicate() for p in procs]
    if any(p.returncode for p in procs):
        err = next(o[1] for p, o in zip(procs, outs, strict=True) if p.returncode)
        print(f"  {world} ranks {mode}: failed: {err.strip().splitlines()[-1] if err.strip() else '?'}")
        return None
    return json.loads(outs[0][0].strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    args = parse()
    if args.worker:
        worker(args)
        return
    import numpy as np

    sys.path[:0] = PATHS
    from eat_inference import pipeline

    default_res = {"tiny": 64, "tiny-xl": 64, "sd15": 512, "sdxl": 1024}[args.preset]
    resolutions = args.resolutions or [default_res]
    where = f"{args.device}, {args.threads} thread(s) per rank" if args.device == "cpu" else "cuda"
    print(f"per-step time (median over displaced steps, then over {args.runs} runs), {args.steps} steps "
          f"({args.warmup} synchronous in displaced mode), {args.preset} model, {where}")  # fmt: skip
    print(
        f"{'px':>5} {'ranks':>5} {'mode':<10} {'step ms per rank':<34} {'ms (max)':>9} {'vs 1 rank':>9} {'PSNR dB':>8} {'KiB/step':>9}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for res in resolutions:
            ref = pathlib.Path(tmp) / f"ref-{res}.npy"
            base = launch(args, 1, "sync", res, ref)
            if base is None:
                continue
            base_ms = 1000 * max(base["step_s"])  # type: ignore[arg-type]
            print(f"{res:>5} {1:>5} {'single':<10} {base_ms:<34.1f} {base_ms:>9.1f} {1.0:>9.2f} {'inf':>8} {0:>9}")
            for world in [w for w in args.worlds if w > 1]:
                for mode in args.modes:
                    if mode == "cfg" and world != 2:
                        continue
                    img = pathlib.Path(tmp) / f"{mode}-{world}-{res}.npy"
                    out = launch(args, world, mode, res, img)
                    if out is None:
                        continue
                    ms = [1000 * s for s in out["step_s"]]  # type: ignore[union-attr]
                    psnr = pipeline.psnr(np.load(img), np.load(ref))
                    print(f"{res:>5} {world:>5} {mode:<10} {' '.join(f'{m:.1f}' for m in ms):<34} {max(ms):>9.1f} "
                          f"{base_ms / max(ms):>9.2f} {psnr:>8.1f} {int(out['exchange_bytes']) // 1024:>9}")  # type: ignore[call-overload]  # fmt: skip


if __name__ == "__main__":
    main()
