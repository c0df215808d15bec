"""The tiny model, the single-rank pipeline and the wrappers, in this process (no gang needed)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

pytest.importorskip("diffusers")

import torch
import torch.distributed as dist
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from eat_inference import cli, patches, pipeline
from typer.testing import CliRunner

from .conftest import model_variant


def test_make_tiny_model_command(tmp_path: pathlib.Path) -> None:
    result = CliRunner().invoke(cli.app, ["make-tiny-model", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tmp_path / "m" / part).is_dir()
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "m", safety_checker=None, local_files_only=True)
    ids = pipe.tokenizer("a photo of a cat").input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id
    assert len(ids) == 7  # start, "a", "photo", "of", "a", "cat", end: whole words in the local vocabulary
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)


def test_single_rank_equals_diffusers_pipeline(tiny_model: pathlib.Path) -> None:
    """Our denoising loop at world size 1 is StableDiffusionPipeline's, step for step."""
    ours = pipeline.PatchParallelPipeline.from_pretrained(str(tiny_model), pipeline.Parallel())
    result = ours("a photo of a cat", num_inference_steps=3, guidance_scale=7.5, seed=3)
    theirs = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, local_files_only=True)
    theirs.set_progress_bar_config(disable=True)
    image = theirs(
        "a photo of a cat",
        num_inference_steps=3,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
    ).images[0]
    assert result.image is not None and len(result.step_s) == 3
    np.testing.assert_allclose(result.image, image, atol=1e-5)


def test_make_tiny_xl_model_command(tmp_path: pathlib.Path) -> None:
    result = CliRunner().invoke(cli.app, ["make-tiny-model", str(tmp_path / "xl"), "--preset", "tiny-xl"])
    assert result.exit_code == 0, result.output
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "xl", local_files_only=True)
    assert pipe.text_encoder_2.config.projection_dim == pipe.unet.config.projection_class_embeddings_input_dim - 6 * 8
    assert pipe.unet.config.addition_embed_type == "text_time" and pipe.vae.config.force_upcast
    bad = CliRunner().invoke(cli.app, ["make-tiny-model", str(tmp_path / "x"), "--preset", "sd3"])
    assert bad.exit_code == 2 and "tiny or tiny-xl" in bad.output


def test_the_sdxl_bench_preset_has_sdxls_unet() -> None:
    """bench/inference_step.py --preset sdxl times SDXL's UNet: 2,567,463,684 parameters, as in
    stabilityai/stable-diffusion-xl-base-1.0 (counted on the meta device: no memory)."""
    from eat_inference import tiny

    with torch.device("meta"):
        unet = tiny.xl_unet(full=True)
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684
    assert unet.config.cross_attention_dim == 2048 and unet.config.projection_class_embeddings_input_dim == 2816


# Variants of the tiny SDXL that take other paths through the runner, each checked against
# diffusers' own pipeline: SDXL-Turbo's sampler (ancestral Euler, trailing timesteps, noise every
# step, no guidance), a VAE with per-channel latent statistics (Playground v2.5), and a UNet that
# embeds the guidance scale instead of running two branches (LCM-distilled).
XL_VARIANTS = {
    "euler-guided": ({}, 7.5),
    "turbo-sampler": (dict(scheduler="EulerAncestralDiscreteScheduler", timestep_spacing="trailing"), 0.0),
    "latent-statistics": (dict(vae={"latents_mean": [-1.66, 1.89, -1.38, 2.52], "latents_std": [8.49, 5.9, 6.55, 5.23],
                                    "scaling_factor": 0.5}), 7.5),
    "guidance-embedding": (dict(unet={"time_cond_proj_dim": 16}), 7.5),
}


@pytest.mark.parametrize("variant", list(XL_VARIANTS))
def test_single_rank_equals_diffusers_xl_pipeline(tiny_xl_model: pathlib.Path, tmp_path: pathlib.Path, variant: str) -> None:
    """For SDXL too: pooled embeddings, time ids, the sampler's own noise and the decode as diffusers makes them."""
    edits, guidance = XL_VARIANTS[variant]
    model = model_variant(tiny_xl_model, tmp_path / variant, **edits) if edits else tiny_xl_model
    ours = pipeline.PatchParallelPipeline.from_pretrained(str(model), pipeline.Parallel())
    assert ours.is_xl
    result = ours("a photo of a cat", "a dog", num_inference_steps=3, guidance_scale=guidance, seed=3)
    theirs = StableDiffusionXLPipeline.from_pretrained(model, local_files_only=True)
    assert type(theirs.scheduler).__name__ == type(ours.pipe.scheduler).__name__ == edits.get("scheduler", "EulerDiscreteScheduler")
    theirs.set_progress_bar_config(disable=True)
    image = theirs(
        "a photo of a cat",
        negative_prompt="a dog",
        num_inference_steps=3,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
    ).images[0]
    assert result.image is not None and result.image.shape == (64, 64, 3)
    np.testing.assert_allclose(result.image, image, atol=1e-5)


def test_sdxl_in_float16_decodes_in_float32(tiny_xl_model: pathlib.Path) -> None:
    """SDXL's VAE overflows in float16 (``force_upcast``): the UNet runs in half precision, the
    decode in float32 (then the VAE goes back to half), and the image matches the all-float32
    one up to half-precision rounding."""
    half = pipeline.PatchParallelPipeline.from_pretrained(str(tiny_xl_model), pipeline.Parallel(), dtype=torch.float16)
    decoded_in: list[torch.dtype] = []
    half.pipe.vae.decoder.register_forward_pre_hook(lambda _, args: decoded_in.append(args[0].dtype))
    image = half("a photo of a cat", num_inference_steps=2, seed=1).image
    assert decoded_in == [torch.float32]
    assert half.pipe.unet.dtype == torch.float16 and half.pipe.vae.dtype == torch.float16
    full = pipeline.PatchParallelPipeline.from_pretrained(str(tiny_xl_model), pipeline.Parallel())
    reference = full("a photo of a cat", num_inference_steps=2, seed=1).image
    assert image is not None and reference is not None and np.isfinite(image).all()
    assert np.abs(image - reference).max() < 0.02


@pytest.fixture
def one_rank_group() -> object:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield None
    dist.destroy_process_group()


@pytest.mark.parametrize("warmup", [pytest.param(10, id="synchronous"), pytest.param(1, id="displaced")])
def test_wrappers_compute_the_same_unet(tiny_model: pathlib.Path, one_rank_group: object, warmup: int) -> None:
    """With one rank the wrapped UNet must equal the original (halo = zero padding, own stats, own K/V)."""
    unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet")
    wrapped = UNet2DConditionModel.from_pretrained(tiny_model / "unet")
    runtime = patches.PatchRuntime(None, 0, 1, warmup_steps=warmup)
    installed = patches.install(wrapped, runtime)
    assert installed.convs > 10 and installed.group_norms > 10 and installed.self_attentions == 7
    sample = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for step, t in enumerate((900, 500, 100)):
            runtime.step = step
            got = wrapped(sample, t, encoder_hidden_states=text).sample
            runtime.end_step()
            want = unet(sample, t, encoder_hidden_states=text).sample
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    runtime.exchange.drain()


@pytest.mark.parametrize(
    ("parallel", "height", "guidance", "message"),
    [
        pytest.param(pipeline.Parallel(mode="cfg", world_size=4), 64, 7.5, "exactly 2 ranks", id="cfg-needs-2"),
        pytest.param(
            pipeline.Parallel(mode="cfg", world_size=2),
            64,
            1.0,
            "needs two-branch classifier-free guidance",
            id="cfg-needs-guidance",
        ),
        pytest.param(
            pipeline.Parallel(mode="displaced", world_size=4), 48, 7.5, "multiple of 32", id="height-not-splittable"
        ),
        pytest.param(
            pipeline.Parallel(mode="displaced", world_size=2, warmup_steps=0),
            64,
            7.5,
            "at least 1 synchronous",
            id="no-warmup",
        ),
        pytest.param(pipeline.Parallel(mode="naive"), 63, 7.5, "multiples of 2", id="not-vae-multiple"),
    ],
)
def test_check_inputs(
    tiny_model: pathlib.Path, parallel: pipeline.Parallel, height: int, guidance: float, message: str
) -> None:
    pp = pipeline.PatchParallelPipeline.from_pretrained(str(tiny_model), parallel)
    with pytest.raises(ValueError, match=message):
        pp.check_inputs(height, 64, 4, guidance)


def test_psnr() -> None:
    a = np.zeros((4, 4, 3), np.float32)
    assert pipeline.psnr(a, a) == float("inf")
    assert pipeline.psnr(a + 0.1, a) == pytest.approx(20.0)
