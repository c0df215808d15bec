"""GPU types and the model catalog, with their sourced constants.

Every figure comes from ``shared/calibration.md`` (section numbers in the comments); figures
marked (est.) there are estimates. The latency law is calibration.md §6:

    t_step = t_floor + c512 · u · r · ((1 − f512) + f512 · r) / gpu_speed

with r = pixels / 512², u = 2 with classifier-free guidance else 1.
"""

from __future__ import annotations

import dataclasses
import math

REFERENCE_PIXELS = 512 * 512


@dataclasses.dataclass(frozen=True)
class GpuType:
    name: str
    product: str
    """Value of the ``nvidia.com/gpu.product`` node label."""
    speed: float
    """Compute throughput relative to an A100-80GB (calibration.md §6b)."""
    mem_gb: float
    link: str
    """Interconnect between GPUs of one node: ``nvlink`` or ``pcie`` (§6f)."""


GPU_TYPES: dict[str, GpuType] = {
    g.name: g
    for g in (
        GpuType("H100", "NVIDIA-H100-80GB-HBM3", 1.9, 80, "nvlink"),
        GpuType("A100", "NVIDIA-A100-SXM4-80GB", 1.0, 80, "nvlink"),
        GpuType("L40S", "NVIDIA-L40S", 0.95, 48, "pcie"),
        GpuType("A10G", "NVIDIA-A10G", 0.35, 24, "pcie"),
        GpuType("L4", "NVIDIA-L4", 0.30, 24, "pcie"),
        GpuType("T4", "Tesla-T4", 0.15, 16, "pcie"),
    )
}

# Patch-parallel efficiency E(k, pixels) = speed-up / k over NVLink (calibration.md §6f).
_EFFICIENCY_PIXELS = (512**2, 1024**2, 2048**2, 3840**2)
_EFFICIENCY = {
    1: (1.0, 1.0, 1.0, 1.0),
    2: (0.55, 0.82, 0.88, 0.90),
    4: (0.30, 0.62, 0.75, 0.85),
    8: (0.15, 0.38, 0.56, 0.76),
}
# How much more of the NVLink inefficiency (1 − E) each link loses (§6f: PCIe 1.7×; across
# nodes over Ethernet we take 2.5× (est.), which keeps 16-vs-8 GPU gains small as xDiT saw).
LINK_PENALTY = {"nvlink": 1.0, "pcie": 1.7, "network": 2.5}
WARMUP_SYNC_STEPS = 4
"""DistriFusion runs its first steps synchronously (§6f), at 0.8 of the async efficiency."""


def patch_speedup(k: int, pixels: float, link: str) -> float:
    """Speed-up of the denoising compute on k patches; never below 1 (k=1 fallback)."""
    if k == 1:
        return 1.0
    row = _EFFICIENCY[k]
    x = math.log(max(pixels, _EFFICIENCY_PIXELS[0]))
    xs = [math.log(p) for p in _EFFICIENCY_PIXELS]
    if x >= xs[-1]:
        eff = row[-1]
    else:
        i = max(j for j in range(len(xs) - 1) if xs[j] <= x)
        w = (x - xs[i]) / (xs[i + 1] - xs[i])
        eff = row[i] + w * (row[i + 1] - row[i])
    eff = 1.0 - LINK_PENALTY[link] * (1.0 - eff)
    return max(1.0, k * eff)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    size_gb: float
    """Bytes fetched from the model store and loaded to the GPU (§6d)."""
    vram_gb: float
    """GPU memory a resident pipeline holds at batch 1 (§3)."""
    t_floor_s: float
    c512_s: float
    f512: float
    cfg: bool
    text_s: float
    vae512_s: float
    pixels: tuple[int, ...]
    """Resolutions (width·height) jobs ask of this model."""
    steps_range: tuple[int, int]
    quality_knots: tuple[tuple[int, float], ...]
    """(steps, CLIP-score/100) points; Q is interpolated in log(steps), flat outside."""
    popularity: float
    patch_row_px: int = 64
    """Row patches must be whole rows of this many pixels (VAE ×8 × the UNet's downsampling:
    ×8 in SD 1.x, ×4 in SDXL), so that every rank samples exactly the whole-image UNet's rows."""

    def max_patches(self, height: int) -> int:
        """The most patches (1, 2, 4, 8) an image this tall splits into (``eat_inference``'s rule)."""
        return max(k for k in (1, 2, 4, 8) if k == 1 or height % (self.patch_row_px * k) == 0)

    def step_s(self, pixels: float, speed: float, speedup: float = 1.0) -> float:
        r = pixels / REFERENCE_PIXELS
        u = 2 if self.cfg else 1
        compute = self.c512_s * u * r * ((1 - self.f512) + self.f512 * r) / speed
        return self.t_floor_s + compute / speedup

    def disk_start_s(self) -> float:
        """A cold pod's start-up with the weights on the node's disk: pipeline init + load (§6e)."""
        return self.size_gb / DISK_LOAD_GB_S + PIPELINE_INIT_S

    def quality(self, steps: int) -> float:
        knots = self.quality_knots
        if steps <= knots[0][0]:
            return knots[0][1] if steps >= knots[0][0] else 0.0
        for (s0, q0), (s1, q1) in zip(knots, knots[1:]):
            if steps <= s1:
                w = math.log(steps / s0) / math.log(s1 / s0)
                return q0 + w * (q1 - q0)
        return knots[-1][1]


# Quality knots follow the shape of the LCM paper's DDIM CLIP scores (6/14/26/29 at 1/2/4/8
# steps) saturating near MLPerf's SDXL CLIP window (31.7), §5; turbo models are near their
# best at 1-4 steps (SDXL-Turbo 4 steps ≈ SDXL 50 steps, §5). All (est.).
MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="sd15", size_gb=2.1, vram_gb=4.5, t_floor_s=0.011, c512_s=0.010, f512=0.20,
        cfg=True, text_s=0.008, vae512_s=0.040, pixels=(512 * 512, 768 * 768),
        steps_range=(10, 50),
        quality_knots=((1, 0.06), (2, 0.14), (4, 0.25), (8, 0.28), (20, 0.30), (30, 0.305), (50, 0.307)),
        popularity=0.45,
    ),
    ModelSpec(
        name="sdxl", size_gb=6.9, vram_gb=10.0, t_floor_s=0.020, c512_s=0.0098, f512=0.013,
        cfg=True, text_s=0.010, vae512_s=0.045, pixels=(1024 * 1024, 1280 * 1280),
        steps_range=(15, 40),
        quality_knots=((1, 0.07), (2, 0.15), (4, 0.26), (8, 0.295), (20, 0.315), (30, 0.318), (50, 0.32)),
        popularity=0.35, patch_row_px=32,
    ),
    ModelSpec(
        name="sdxl-turbo", size_gb=6.9, vram_gb=10.0, t_floor_s=0.030, c512_s=0.0098, f512=0.013,
        cfg=False, text_s=0.010, vae512_s=0.045, pixels=(512 * 512,),
        steps_range=(1, 4),
        quality_knots=((1, 0.29), (2, 0.30), (4, 0.305)),
        popularity=0.20, patch_row_px=32,
    ),
)
MODEL_INDEX = {m.name: i for i, m in enumerate(MODELS)}
MODEL_BY_NAME = {m.name: m for m in MODELS}

# Load path (§6e): local NVMe / page cache with the default loader, object store per node.
DISK_LOAD_GB_S = 1.5
STORE_FETCH_GB_S = 0.5
PIPELINE_INIT_S = 2.0
"""Process start, CUDA context and pipeline assembly on a cold pod (§6e, est.)."""
GANG_RENDEZVOUS_S = 0.5
"""torch.distributed rendezvous of a k > 1 gang (est.)."""
