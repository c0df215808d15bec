"""A tiny Stable Diffusion with random weights, saved in diffusers format.

Tests, the demo and the CPU benchmark need a model that loads through the same
``from_pretrained`` path as real SD 1.x weights, but nothing can be downloaded here. This
module builds one from configs alone: a small UNet with cross- and self-attention at two
levels, a two-level VAE, a two-layer CLIP text encoder and a byte-level CLIP tokenizer whose
vocabulary is written locally (the 256 byte symbols, their end-of-word forms and a few
merges). Weights come from a seeded generator, so the same seed gives the same model.

This is our counterpart of diffusers' ``get_dummy_components()`` in its pipeline tests.
"""

from __future__ import annotations

import pathlib

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TEXT_DIM = 32
"""Width of the text encoder; the UNet's cross-attention dimension."""

# A handful of merges so that common prompt words become single tokens, as in CLIP's vocab.
_WORDS = ("a", "an", "the", "of", "cat", "dog", "photo", "red", "blue", "house", "tree", "sky", "painting")


def _bytes_to_unicode() -> dict[int, str]:
    # Copied from CLIP's / GPT-2's tokenizer: printable stand-ins for every byte.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def make_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over a locally built byte-level BPE vocabulary (no downloads)."""
    symbols = list(_bytes_to_unicode().values())
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
        raise ValueError(f"`preset` must be 'tiny' or 'sd15', got {preset!r}")
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
            sample_size=32,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_DIM,
            attention_head_dim=8,
            norm_num_groups=8,
        )
    torch.manual_seed(seed + 1)
    levels = 4 if sd15 else 2
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 32, 32)[:levels],
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=512 if sd15 else 64,
    )
    tokenizer = make_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_dim,
            intermediate_size=2 * text_dim,
            num_hidden_layers=1 if sd15 else 2,
            num_attention_heads=12 if sd15 else 4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
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


def make_pipeline(seed: int = 0, preset: str = "tiny") -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` of :func:`make_components` (no safety checker)."""
    return StableDiffusionPipeline(
        **make_components(seed, preset),  # type: ignore[arg-type]
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_model(path: str | pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Build the tiny model and save it in diffusers format under ``path``; return the path."""
    out = pathlib.Path(path)
    make_pipeline(seed).save_pretrained(out, safe_serialization=True)  # type: ignore[attr-defined]
    return out
