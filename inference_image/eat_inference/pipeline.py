"""Patch-parallel Stable Diffusion over diffusers' UNet pipelines (SD 1.x / 2.x and SDXL).

One process per rank runs :class:`PatchParallelPipeline`; together they make one image.
The components (text encoders, tokenizers, UNet, VAE, scheduler) are diffusers' own, loaded
by ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline.from_pretrained``, whichever the
folder's ``model_index.json`` names; this file only writes out the denoising loop,
because each rank denoises a different part of the latent (diffusers' "simple over easy":
the loop is visible, not hidden behind callbacks).

Modes (``--mode`` of ``eat-infer run``):

- ``sync``: row patches, every exchange synchronous. Equals the single-rank image up to
  float rounding; the reference for what displacement costs in quality.
- ``displaced``: DistriFusion. ``warmup_steps`` synchronous steps, then every layer uses the
  other patches' activations from the previous step, exchanged asynchronously
  (:mod:`eat_inference.patches`).
- ``naive``: row patches denoised independently (no exchange): seams, for comparison.
- ``cfg``: two ranks, one per classifier-free-guidance branch (unconditional, text), each on
  the whole latent; they swap noise predictions every step.

With one rank every mode is the plain pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils.torch_utils import randn_tensor

from eat_inference import patches

Mode = Literal["sync", "displaced", "naive", "cfg"]
MODES: tuple[Mode, ...] = ("sync", "displaced", "naive", "cfg")
PIPELINES: dict[str, Any] = {
    "StableDiffusionPipeline": StableDiffusionPipeline,
    "StableDiffusionXLPipeline": StableDiffusionXLPipeline,
}
"""The diffusers pipelines (``model_index.json``'s ``_class_name``) the patch-parallel runner runs."""


@dataclasses.dataclass(frozen=True)
class Parallel:
    """This process's place in the gang and how the image is split."""

    mode: Mode = "displaced"
    rank: int = 0
    world_size: int = 1
    group: dist.ProcessGroup | None = None
    """The process group of the gang; ``None`` is the default group (or no group at world size 1)."""
    warmup_steps: int = 4
    """Synchronous steps before ``displaced`` mode uses stale activations (DistriFusion uses 4)."""
    comm_buckets: int = 4
    """Asynchronous gathers per displaced step: more overlap, more messages."""


@dataclasses.dataclass
class Result:
    """What one call produced on this rank."""

    latents: torch.Tensor
    """(1, 4, H/8, W/8) final latents of the whole image, on every rank."""
    step_s: list[float]
    """Seconds of each denoising step on this rank (UNet + scheduler + exchange)."""
    encode_s: float
    decode_s: float
    total_s: float
    image: np.ndarray | None = None
    """(H, W, 3) float32 in [0, 1], on rank 0 only."""
    exchange_bytes_per_step: int = 0


class PatchParallelPipeline:
    """A diffusers SD or SDXL text-to-image pipeline run by ``world_size`` ranks on one image."""

    def __init__(self, pipe: Any, parallel: Parallel) -> None:
        # ``pipe`` is a StableDiffusion(XL)Pipeline (Any: diffusers registers its components at
        # run time, where mypy cannot see them).
        self.pipe = pipe
        self.parallel = parallel
        self.runtime: patches.PatchRuntime | None = None
        self.installed: patches.Installed | None = None
        if parallel.world_size > 1 and parallel.mode in ("sync", "displaced"):
            self.runtime = patches.PatchRuntime(
                parallel.group, parallel.rank, parallel.world_size, parallel.warmup_steps, parallel.comm_buckets
            )
            self.installed = patches.install(self.pipe.unet, self.runtime)

    @classmethod
    def from_pretrained(
        cls, path: str, parallel: Parallel, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> PatchParallelPipeline:
        """Load SD or SDXL components from a local diffusers folder (no hub access) onto ``device``.

        Raises ValueError, before loading any weights, for another pipeline (an SDXL refiner,
        an image-to-image or a non-UNet pipeline): its inputs are not a text-to-image UNet's."""
        kind = json.loads((pathlib.Path(path) / "model_index.json").read_text()).get("_class_name")
        if kind not in PIPELINES:
            raise ValueError(f"{path} holds a {kind}; this runner runs {', '.join(PIPELINES)} only")
        no_checker = {"safety_checker": None, "requires_safety_checker": False}  # SD 1.x's; SDXL has none
        extra = {} if kind == "StableDiffusionXLPipeline" else no_checker
        pipe = PIPELINES[kind].from_pretrained(path, dtype=dtype, local_files_only=True, **extra)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe.to(device), parallel)

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def downsampling(self) -> int:
        """How much the UNet shrinks the latent (2 per downsampling block)."""
        return int(2 ** (len(self.pipe.unet.config.block_out_channels) - 1))

    def check_inputs(self, height: int, width: int, num_inference_steps: int, guidance_scale: float) -> None:
        p, vsf = self.parallel, self.pipe.vae_scale_factor
        if p.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {p.mode!r}")
        if height % vsf or width % vsf:
            raise ValueError(f"`height` and `width` must be multiples of {vsf}, got {height}×{width}")
        if num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be at least 1, got {num_inference_steps}")
        if p.world_size < 1 or not 0 <= p.rank < p.world_size:
            raise ValueError(f"rank {p.rank} is not in a world of size {p.world_size}")
        if p.world_size == 1:
            return
        if p.mode == "cfg":
            if p.world_size != 2:
                raise ValueError(
                    f"`cfg` mode splits the two guidance branches over exactly 2 ranks, got {p.world_size}"
                )
            if not self.guided(guidance_scale):
                raise ValueError(
                    f"`cfg` mode needs two-branch classifier-free guidance (`guidance_scale` > 1, a UNet "
                    f"without a guidance embedding), got {guidance_scale}"
                )
            return
        # Row patches must stay whole rows at the UNet's coarsest level, so that every rank
        # down- and up-samples exactly the rows of the whole-image UNet.
        unit = vsf * self.downsampling * p.world_size
        if height % unit:
            raise ValueError(
                f"`height` {height} cannot be split into {p.world_size} row patches for this model: "
                f"it must be a multiple of {unit} (VAE ×{vsf}, UNet ×{self.downsampling}, {p.world_size} ranks)"
            )
        if p.mode == "displaced" and p.warmup_steps < 1:
            raise ValueError(f"`displaced` mode needs at least 1 synchronous warm-up step, got {p.warmup_steps}")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        seed: int = 0,
        decode: bool = True,
    ) -> Result:
        pipe, p = self.pipe, self.parallel
        height = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
        width = width or pipe.unet.config.sample_size * pipe.vae_scale_factor
        t_start = time.perf_counter()

        # 1. Check inputs
        self.check_inputs(height, width, num_inference_steps, guidance_scale)
        guided = self.guided(guidance_scale)
        patched = p.world_size > 1 and p.mode != "cfg"

        # 2. Encode the prompt (every rank: the text encoder is small next to the UNet)
        t0 = time.perf_counter()
        split_cfg = guided and p.mode == "cfg" and p.world_size == 2
        prompt_embeds, added_cond = self._encode(prompt, negative_prompt, guided, height, width)
        if split_cfg:  # rank 0: unconditional, rank 1: text
            prompt_embeds = prompt_embeds[p.rank : p.rank + 1]
            added_cond = {k: v[p.rank : p.rank + 1] for k, v in added_cond.items()} if added_cond else None
        encode_s = time.perf_counter() - t0

        # 3. Timesteps
        pipe.scheduler.set_timesteps(num_inference_steps, device=self.device)
        if hasattr(pipe.scheduler, "set_begin_index"):
            pipe.scheduler.set_begin_index(0)
        timesteps = pipe.scheduler.timesteps
        if self.runtime is not None:  # counted in UNet calls: a second-order sampler makes two per step
            order = getattr(pipe.scheduler, "order", 1)
            self.runtime.reset(p.warmup_steps * order if p.mode == "displaced" else len(timesteps))
        timestep_cond = self._guidance_embedding(guidance_scale)

        # 4. Initial noise of the whole latent from the seed (same on every rank), then this rank's rows
        generator = torch.Generator("cpu").manual_seed(seed)
        shape = (1, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
        latents = randn_tensor(shape, generator=generator, device=self.device, dtype=prompt_embeds.dtype)
        latents = latents * pipe.scheduler.init_noise_sigma
        rows = shape[2] // p.world_size if patched else shape[2]
        mine = slice(p.rank * rows, (p.rank + 1) * rows) if patched else slice(None)
        latents = latents[:, :, mine].contiguous()
        # Every rank keeps the generator in step with one rank's: a stochastic sampler's noise
        # (ancestral Euler, SDXL-Turbo's) is then drawn for the whole latent, as one rank draws it.
        extra_step_kwargs = pipe.prepare_extra_step_kwargs(generator, 0.0)

        # 5. Denoising loop
        step_s: list[float] = []
        for i, t in enumerate(timesteps):
            t0 = time.perf_counter()
            model_input = torch.cat([latents] * 2) if guided and not split_cfg else latents
            model_input = pipe.scheduler.scale_model_input(model_input, t)
            if self.runtime is not None:
                self.runtime.step = i
            noise_pred = pipe.unet(
                model_input, t, encoder_hidden_states=prompt_embeds, timestep_cond=timestep_cond,
                added_cond_kwargs=added_cond, return_dict=False,
            )[0]
            if self.runtime is not None:
                self.runtime.end_step()
            if split_cfg:
                both = torch.empty((2, *noise_pred.shape), dtype=noise_pred.dtype, device=noise_pred.device)
                dist.all_gather(list(both.unbind(0)), noise_pred.contiguous(), group=p.group)
                noise_uncond, noise_text = both[0], both[1]
                noise_pred = noise_uncond + guidance_scale * (noise_text - noise_uncond)
            elif guided:
                noise_uncond, noise_text = noise_pred.chunk(2)
                noise_pred = noise_uncond + guidance_scale * (noise_text - noise_uncond)
            latents = self._scheduler_step(noise_pred, t, latents, shape, mine, extra_step_kwargs)
            self._synchronize()
            step_s.append(time.perf_counter() - t0)
        if self.runtime is not None:
            self.runtime.exchange.drain()

        # 6. Stitch the patches back together
        if patched:
            parts = torch.empty((p.world_size, *latents.shape), dtype=latents.dtype, device=latents.device)
            dist.all_gather(list(parts.unbind(0)), latents.contiguous(), group=p.group)
            latents = torch.cat(parts.unbind(0), dim=2)

        # 7. Decode on rank 0
        image, decode_s = None, 0.0
        if decode and p.rank == 0:
            t0 = time.perf_counter()
            decoded = self._decode(latents)
            image = pipe.image_processor.postprocess(decoded, output_type="np")[0].astype(np.float32)
            decode_s = time.perf_counter() - t0
        return Result(
            latents=latents,
            step_s=step_s,
            encode_s=encode_s,
            decode_s=decode_s,
            total_s=time.perf_counter() - t_start,
            image=image,
            exchange_bytes_per_step=self.runtime.exchange.bytes_per_step if self.runtime is not None else 0,
        )

    @property
    def is_xl(self) -> bool:
        return isinstance(self.pipe, StableDiffusionXLPipeline)

    def guided(self, guidance_scale: float) -> bool:
        """Two-branch classifier-free guidance: above 1, unless the UNet embeds the guidance
        scale itself (``time_cond_proj_dim``: LCM-distilled models), as in diffusers."""
        return guidance_scale > 1.0 and self.pipe.unet.config.time_cond_proj_dim is None

    def _guidance_embedding(self, guidance_scale: float) -> torch.Tensor | None:
        dim = self.pipe.unet.config.time_cond_proj_dim
        if dim is None:
            return None
        w = torch.tensor([guidance_scale - 1.0])
        return self.pipe.get_guidance_scale_embedding(w, embedding_dim=dim).to(self.device, self.pipe.unet.dtype)

    def _scheduler_step(
        self, noise_pred: torch.Tensor, t: torch.Tensor, latents: torch.Tensor, shape: tuple[int, ...],
        mine: slice, extra_step_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """One sampler step on this rank's rows.

        Samplers work element by element, but a stochastic one draws its noise for the tensor
        it is given. A row patch is therefore stepped inside a whole-latent tensor (zeros
        elsewhere), so that every rank draws the single-rank noise and keeps its own rows."""
        step = self.pipe.scheduler.step
        if latents.shape[2] == shape[2]:
            return step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]  # type: ignore[no-any-return]
        whole_pred, whole = latents.new_zeros(shape), latents.new_zeros(shape)
        whole_pred[:, :, mine], whole[:, :, mine] = noise_pred, latents
        return step(whole_pred, t, whole, **extra_step_kwargs, return_dict=False)[0][:, :, mine].contiguous()  # type: ignore[no-any-return]

    def _encode(
        self, prompt: str, negative_prompt: str | None, guided: bool, height: int, width: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """Text embeddings, batch 2 (unconditional, text) when guided, and SDXL's added conditioning.

        SDXL's UNet also takes the pooled text embedding and six "time ids" (original size,
        crop corner, target size); every patch gets the whole image's, as the image is what
        they describe."""
        pipe = self.pipe
        if not self.is_xl:
            text, negative = pipe.encode_prompt(prompt, self.device, 1, guided, negative_prompt)
            return (torch.cat([negative, text]) if guided else text), None
        text, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=prompt, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=guided, negative_prompt=negative_prompt,
        )
        time_ids = pipe._get_add_time_ids(
            (height, width), (0, 0), (height, width), dtype=text.dtype,
            text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
        ).to(self.device)
        if guided:
            return torch.cat([negative, text]), {
                "text_embeds": torch.cat([negative_pooled, pooled]), "time_ids": torch.cat([time_ids, time_ids])
            }
        return text, {"text_embeds": pooled, "time_ids": time_ids}

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE decode, as diffusers' pipelines make it.

        SDXL's VAE overflows in float16 (``force_upcast``): it decodes in float32 and goes back to
        float16 after (SD 1.x's decodes in float16, there and here). A VAE whose latents are
        normalised per channel (``latents_mean``/``latents_std``: Playground v2.5) is de-normalised."""
        vae, config = self.pipe.vae, self.pipe.vae.config
        upcast = self.is_xl and vae.dtype == torch.float16 and config.force_upcast
        if upcast:
            vae.to(torch.float32)
        latents = latents.to(vae.dtype)
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if self.is_xl and mean is not None and std is not None:
            mean_t, std_t = (torch.tensor(v).view(1, -1, 1, 1).to(latents) for v in (mean, std))
            latents = latents * std_t / config.scaling_factor + mean_t
        else:
            latents = latents / config.scaling_factor
        try:
            return vae.decode(latents, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(torch.float16)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1] (inf when equal)."""
    mse = float(np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * float(np.log10(1.0 / mse))
