"""One rank of a gang that makes the same image in several patch modes, one after another.

Started once per rank by the tests (real processes, gloo): ``python rank_worker.py MODEL OUT
MODES STEPS WARMUP``. One rendezvous and one model load serve every mode, which keeps the
multi-rank tests within the two cores' budget; ``eat-infer run`` itself is tested separately.
Rank 0 writes ``OUT/<mode>-w<world>.npy`` (float32 image in [0, 1]).
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import torch
from eat_inference import pipeline, rendezvous


def main() -> None:
    model, out, modes, steps, warmup = (
        sys.argv[1],
        pathlib.Path(sys.argv[2]),
        sys.argv[3].split(","),
        int(sys.argv[4]),
        int(sys.argv[5]),
    )
    torch.set_num_threads(1)
    env = rendezvous.DistEnv.from_env()
    rendezvous.join(env, "gloo", timeout_s=60)
    try:
        for mode in modes:
            parallel = pipeline.Parallel(mode=mode, rank=env.rank, world_size=env.world_size, warmup_steps=warmup)  # type: ignore[arg-type]
            pp = pipeline.PatchParallelPipeline.from_pretrained(model, parallel)
            result = pp("a photo of a cat", num_inference_steps=steps, guidance_scale=7.5, seed=1)
            if env.rank == 0:
                assert result.image is not None
                np.save(out / f"{mode}-w{env.world_size}.npy", result.image)
    finally:
        rendezvous.leave()


if __name__ == "__main__":
    main()
