"""A tiny Stable Diffusion (and a tiny SDXL) with random weights, saved in diffusers format.

Tests, the demo and the CPU benchmark need a model that loads through the same
``from_pretrained`` path as real SD 1.x or SDXL weights, but nothing can be downloaded here. This
module builds one from configs alone: a small UNet with cross- and self-attention at two
levels, a two-level VAE, a two-layer CLIP text encoder and a byte-level CLIP tokenizer whose
vocabulary is written locally (the 256 byte symbols, their end-of-word forms and a few
merges). Weights come from a seeded generator, so the same seed gives the same model.
The SDXL one (``preset="tiny-xl"``) has SDXL's structure at toy width: two text encoders (the
second with a projection, for the pooled embedding), a UNet with three levels, the
``text_time`` added conditioning and two transformer layers per block, and Euler sampling.

This is our counterpart of diffusers' ``get_dummy_components()`` in its pipeline tests.
"""

from __future__ import annotations

import pathlib

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

TEXT_DIM = 32
"""Width of the text encoder; the UNet's cross-attention dimension."""
_TOY_UNET: dict = dict(  # type: ignore[type-arg]
    sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8
)
"""The tiny UNets' shape: three levels (two downsamplings) at toy width."""

# A handful of merges so that common prompt words become single tokens, as in CLIP's vocab.
_WORDS = ("a", "an", "the", "of", "cat", "dog", "photo", "red", "blue", "house", "tree", "sky", "painting")


def make_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over a locally built byte-level BPE vocabulary (no downloads)."""
    symbols = list(bytes_to_unicode().values())  # a printable stand-in for every byte
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab[s] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        # Merge left to right: "c a", "ca t</w>" ... so the whole word becomes one token.
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            merge = (pieces[0], pieces[1])
            if merge not in merges:
                merges.append(merge)
            vocab.setdefault(merged, len(vocab))
            pieces = [merged] + pieces[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)  # type: ignore[arg-type]  # pairs, as BPE wants


def make_components(seed: int = 0, preset: str = "tiny") -> dict[str, object]:
    """The five components of an SD 1.x pipeline with seeded random weights.

    ``tiny``: the UNet has three levels (32, 64, 64 channels; two downsamplings),
    cross-attention and self-attention (``Transformer2DModel``) at the first two levels and
    in the mid block: every kind of layer the patch-parallel wrappers touch. The VAE halves
    the resolution once, so a 64×64 image has a 32×32 latent.

    ``sd15``: SD 1.5's UNet exactly (860 M parameters, 8× VAE), with a small VAE and a
    one-layer text encoder of SD 1.5's width: for timing the UNet step on a GPU
    (bench/inference_step.py), not for looking at.
    """
    if preset not in ("tiny", "sd15"):
        raise ValueError(f"`preset` must be 'tiny' or 'sd15' (SD 1.x components), got {preset!r}")
    sd15 = preset == "sd15"
    text_dim = 768 if sd15 else TEXT_DIM
    torch.manual_seed(seed)
    if sd15:
        unet = UNet2DConditionModel(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768,
            attention_head_dim=8,
        )
    else:
        unet = UNet2DConditionModel(
            **_TOY_UNET,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_DIM,
            attention_head_dim=8,
        )
    torch.manual_seed(seed + 1)
    vae = _vae(levels=4 if sd15 else 2)
    tokenizer = make_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(tokenizer, text_dim, layers=1 if sd15 else 2, heads=12 if sd15 else 4))
    # SD 1.x's scheduler settings (scaled-linear betas), deterministic DDIM sampling.
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def _vae(levels: int) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 32, 32)[:levels],
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=512 if levels == 4 else 64,
    )


def _text_config(
    tokenizer: CLIPTokenizer, width: int, layers: int, heads: int, projection_dim: int = 512
) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=projection_dim,
    )


_XL_TEXT_WIDTHS = (768, 1280)
"""SDXL's two text encoders: CLIP ViT-L and OpenCLIP ViT-bigG (projected to 1280 for the pooled embedding)."""


def xl_unet(full: bool) -> UNet2DConditionModel:
    """SDXL's UNet (``full``: SDXL's exact shape) or the toy one of ``tiny-xl``."""
    widths = _XL_TEXT_WIDTHS if full else (TEXT_DIM, TEXT_DIM)
    time_id_dim = 256 if full else 8
    return UNet2DConditionModel(
        **(dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2) if full else _TOY_UNET),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10) if full else (1, 2, 2),
        attention_head_dim=(5, 10, 20) if full else (2, 4, 4),
        use_linear_projection=True,
        cross_attention_dim=sum(widths),
        addition_embed_type="text_time",
        addition_time_embed_dim=time_id_dim,
        projection_class_embeddings_input_dim=6 * time_id_dim + widths[1],
    )


def make_xl_components(seed: int = 0, preset: str = "tiny-xl") -> dict[str, object]:
    """The seven components of an SDXL pipeline with seeded random weights.

    ``tiny-xl``: SDXL's structure at toy width. Like SDXL: the UNet's first level has no
    attention, the deeper ones two transformer layers each; cross-attention reads both text
    encoders' hidden states side by side (2 × 32); the added conditioning is the second
    encoder's pooled, projected embedding plus six time ids (each a sinusoidal embedding of
    width 8). Unlike SDXL, the VAE halves once (not ×8).

    ``sdxl``: SDXL's UNet exactly (2.6 B parameters: 1, 2 and 10 transformer layers per level),
    with a small ×8 VAE and one-layer text encoders of SDXL's widths (768 and 1280): for timing
    the UNet step on a GPU (bench/inference_step.py), not for looking at."""
    if preset not in ("tiny-xl", "sdxl"):
        raise ValueError(f"`preset` must be 'tiny-xl' or 'sdxl' (SDXL components), got {preset!r}")
    full = preset == "sdxl"
    widths = _XL_TEXT_WIDTHS if full else (TEXT_DIM, TEXT_DIM)
    torch.manual_seed(seed)
    unet = xl_unet(full)
    torch.manual_seed(seed + 1)
    vae = _vae(levels=4 if full else 2)  # force_upcast, AutoencoderKL's default, as SDXL's: decoded in float32
    tokenizer = make_tokenizer()
    layers, heads = (1, (12, 20)) if full else (2, (4, 4))
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(tokenizer, widths[0], layers=layers, heads=heads[0]))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(tokenizer, widths[1], layers=layers, heads=heads[1], projection_dim=widths[1])
    )
    # SDXL's scheduler settings: scaled-linear betas, Euler, leading spacing.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    return {
        "unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer, "tokenizer_2": make_tokenizer(), "scheduler": scheduler,
    }


def make_pipeline(seed: int = 0, preset: str = "tiny") -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A pipeline of :func:`make_components` (no safety checker), or of :func:`make_xl_components`."""
    if preset in ("tiny-xl", "sdxl"):
        return StableDiffusionXLPipeline(**make_xl_components(seed, preset), add_watermarker=False)  # type: ignore[arg-type]
    return StableDiffusionPipeline(
        **make_components(seed, preset),  # type: ignore[arg-type]
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_model(path: str | pathlib.Path, seed: int = 0, preset: str = "tiny") -> pathlib.Path:
    """Build a tiny model (``tiny`` or ``tiny-xl``) and save it in diffusers format under ``path``."""
    out = pathlib.Path(path)
    make_pipeline(seed, preset).save_pretrained(out, safe_serialization=True)  # type: ignore[union-attr]
    return out
