"""Patch-aware wrappers for a diffusers UNet: displaced patch parallelism (DistriFusion).

The latent is split into row patches, one per rank; every rank runs the whole UNet on its
patch. Three kinds of layer need to see beyond the patch (paper-notes.md, "Patch
parallelism facts"; DistriFusion, CVPR 2024, Sec. 4):

- a convolution with a kernel taller than one row needs *halo* rows from the neighbours;
- self-attention needs the *keys and values* of the whole image;
- GroupNorm needs the *statistics* (mean, variance) of the whole image.

:func:`install` swaps those layers of a ``UNet2DConditionModel`` for wrappers that keep the
original modules' weights (``PatchConv2d``, ``PatchGroupNorm``) or that are attention
processors (``PatchSelfAttnProcessor``, diffusers' own extension point), so diffusers'
code is composed, not forked.

During the first ``warmup_steps`` UNet calls (and at every call in ``sync`` mode) each
wrapper exchanges fresh data synchronously, so the result equals the single-device UNet up
to float rounding. After that (``displaced`` steps) a wrapper computes with the *stale*
data the other ranks sent at the previous step, replaces its own share with fresh data,
and hands its fresh share to :class:`Exchange`, which gathers it asynchronously (one
``all_gather`` per bucket of layers) while the rest of the UNet runs; the next step waits
for it only when the layer needs it.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers.models import attention_processor
from torch import nn

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Slot:
    """One layer's place in the exchange: its share's shape and, once laid out, its buffers."""

    shape: torch.Size
    gathered: torch.Tensor | None = None
    """(world, *shape): every rank's share, from the last exchange that reached this layer."""
    bucket: int = -1
    offset: int = 0


class Exchange:
    """Moves every wrapper's share (halo rows, K/V, statistics) between the ranks of a patch group.

    Layers get their slot index the first time they call in (execution order), during the
    first, synchronous, UNet call. At the end of that call the slots are laid out in
    ``n_buckets`` contiguous buckets; from then on a displaced step copies each fresh share
    into its bucket's send buffer, and the bucket's asynchronous ``all_gather`` starts as soon
    as its last layer has sent. The receive buffers are read at the next step, after waiting
    on that bucket's handle.
    """

    def __init__(self, group: dist.ProcessGroup | None, rank: int, world_size: int, n_buckets: int = 4) -> None:
        self.group = group
        self.rank = rank
        self.world_size = world_size
        self.n_buckets = max(1, n_buckets)
        self._slots: list[_Slot] = []
        self._send: list[torch.Tensor] = []
        self._recv: list[torch.Tensor] = []
        self._pending: list[dist.Work | None] = []
        self._bucket_last: list[int] = []
        self.bytes_per_step = 0
        """Bytes this rank sends per displaced step (all buckets)."""

    @property
    def laid_out(self) -> bool:
        return bool(self._send)

    def register(self, share: torch.Tensor) -> int:
        self._slots.append(_Slot(share.shape))
        return len(self._slots) - 1

    def gather_now(self, idx: int, share: torch.Tensor) -> torch.Tensor:
        """Synchronous exchange: every rank's fresh share, shape (world, *share.shape)."""
        out = torch.empty((self.world_size, *share.shape), dtype=share.dtype, device=share.device)
        dist.all_gather(list(out.unbind(0)), share.contiguous(), group=self.group)
        slot = self._slots[idx]
        if slot.gathered is None or not self.laid_out:
            slot.gathered = out
        else:
            slot.gathered.copy_(out)
        return out

    def stale(self, idx: int) -> torch.Tensor:
        """Every rank's share from the previous step, shape (world, *shape)."""
        slot = self._slots[idx]
        handle = self._pending[slot.bucket] if self.laid_out else None
        if handle is not None:
            handle.wait()
            self._pending[slot.bucket] = None
        assert slot.gathered is not None, "displaced step before any synchronous one"
        return slot.gathered

    def send(self, idx: int, share: torch.Tensor) -> None:
        """Queue this rank's fresh share; start the bucket's gather when it is complete."""
        slot = self._slots[idx]
        n = share.numel()
        self._send[slot.bucket][slot.offset : slot.offset + n].copy_(share.reshape(-1))
        if idx == self._bucket_last[slot.bucket]:
            recv = self._recv[slot.bucket]
            self._pending[slot.bucket] = dist.all_gather(
                list(recv.unbind(0)), self._send[slot.bucket], group=self.group, async_op=True
            )

    def layout(self) -> None:
        """Put the slots into buckets of about equal size; called after the first UNet call.

        A bucket holds one dtype (GroupNorm statistics stay float32 under a float16 UNet)
        and a run of consecutive slots in execution order.
        """
        if self.laid_out or not self._slots:
            return
        sizes = [s.shape.numel() for s in self._slots]
        dtypes = [s.gathered.dtype if s.gathered is not None else None for s in self._slots]
        per_bucket = max(1, -(-sum(sizes) // self.n_buckets))
        buckets: list[list[int]] = []
        open_bucket: dict[torch.dtype | None, list[int]] = {}
        fill: dict[torch.dtype | None, int] = {}
        for i, n in enumerate(sizes):
            members = open_bucket.get(dtypes[i])
            if members is None or fill[dtypes[i]] >= per_bucket:
                members = open_bucket[dtypes[i]] = []
                fill[dtypes[i]] = 0
                buckets.append(members)
            members.append(i)
            fill[dtypes[i]] += n
        for b, members in enumerate(buckets):
            ref = self._slots[members[0]].gathered
            assert ref is not None, "layout before the first synchronous step"
            total = sum(sizes[i] for i in members)
            send = torch.empty(total, dtype=ref.dtype, device=ref.device)
            recv = torch.empty((self.world_size, total), dtype=ref.dtype, device=ref.device)
            offset = 0
            for i in members:
                slot = self._slots[i]
                slot.bucket, slot.offset = b, offset
                view = recv[:, offset : offset + sizes[i]].view(self.world_size, *slot.shape)
                assert slot.gathered is not None
                view.copy_(slot.gathered)
                # A strided view: rank r's share is row r of the bucket's receive buffer.
                slot.gathered = view
                offset += sizes[i]
                self.bytes_per_step += sizes[i] * ref.element_size()
            self._send.append(send)
            self._recv.append(recv)
            self._pending.append(None)
            self._bucket_last.append(members[-1])
        logger.debug(
            "exchange laid out: %d slots in %d buckets, %d bytes/step", len(sizes), len(buckets), self.bytes_per_step
        )

    def drain(self) -> None:
        """Wait for every gather in flight (end of the denoising loop)."""
        for b, handle in enumerate(self._pending):
            if handle is not None:
                handle.wait()
                self._pending[b] = None


class PatchRuntime:
    """What the wrappers of one UNet share: the rank's place, the step counter and the exchange.

    The pipeline sets :attr:`step` before each UNet call; calls before ``warmup_steps`` are
    synchronous, later ones displaced.
    """

    def __init__(
        self,
        group: dist.ProcessGroup | None,
        rank: int,
        world_size: int,
        warmup_steps: int,
        n_buckets: int = 4,
    ) -> None:
        self.group = group
        self.rank = rank
        self.world_size = world_size
        self.warmup_steps = warmup_steps
        self.n_buckets = n_buckets
        self.step = 0
        self.layers: list[_Layer] = []
        self.exchange = Exchange(group, rank, world_size, n_buckets)

    def reset(self, warmup_steps: int) -> None:
        """Start a new image: forget the previous image's activations and slot layout."""
        self.exchange.drain()
        self.warmup_steps = warmup_steps
        self.step = 0
        self.exchange = Exchange(self.group, self.rank, self.world_size, self.n_buckets)
        for layer in self.layers:
            layer.slot = None

    @property
    def sync(self) -> bool:
        return self.step < self.warmup_steps

    def share(self, layer: _Layer, fresh: torch.Tensor) -> torch.Tensor:
        """Every rank's share for ``layer``, shape (world, *fresh.shape), with this rank's fresh.

        Synchronous step: all shares are fresh. Displaced step: the others' shares are from
        the previous step; this rank's fresh share is queued for the next one.
        """
        ex = self.exchange
        if layer.slot is None:
            layer.slot = ex.register(fresh)
        if self.sync or not ex.laid_out:
            return ex.gather_now(layer.slot, fresh)
        stale = ex.stale(layer.slot)
        shares = stale.clone()
        shares[self.rank] = fresh
        ex.send(layer.slot, fresh)
        return shares

    def end_step(self) -> None:
        if not self.exchange.laid_out:
            self.exchange.layout()
        self.step += 1


class _Layer:
    slot: int | None = None


class PatchConv2d(nn.Module, _Layer):
    """A ``Conv2d`` over a row patch: pads the patch with the neighbours' halo rows, not zeros.

    The halo is ``padding[0]`` rows from the rank above and from the rank below (zeros at the
    image's top and bottom edges, as the original convolution's zero padding gives). The
    convolution then runs without vertical padding, so strides of 2 (downsamplers) give the
    same rows as on the whole image when patch heights are even.
    """

    def __init__(self, conv: nn.Conv2d, runtime: PatchRuntime) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"PatchConv2d needs integer zero padding, got {conv.padding!r} ({conv.padding_mode})")
        self.conv = conv
        self.runtime = runtime
        self.halo = int(conv.padding[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, p, rt = self.conv, self.halo, self.runtime
        if x.shape[2] < p:
            raise ValueError(f"patch of {x.shape[2]} rows is thinner than the halo of {p} rows")
        boundary = torch.cat([x[:, :, :p], x[:, :, -p:]], dim=2)  # (B, C, 2p, W): top rows, bottom rows
        shares = rt.share(self, boundary)
        zeros = torch.zeros_like(x[:, :, :p])
        above = shares[rt.rank - 1][:, :, p:] if rt.rank > 0 else zeros
        below = shares[rt.rank + 1][:, :, :p] if rt.rank < rt.world_size - 1 else zeros
        x = torch.cat([above, x, below], dim=2)
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, (0, int(conv.padding[1])), conv.dilation, conv.groups)


class PatchGroupNorm(nn.Module, _Layer):
    """A ``GroupNorm`` whose mean and variance are those of the whole image, not the patch.

    Each rank shares its per-(sample, group) mean and variance; they are combined with the
    parallel-variance formula (all patches have the same size). In displaced steps the
    others' statistics are one step old and this rank's are fresh, as in DistriFusion.
    """

    def __init__(self, norm: nn.GroupNorm, runtime: PatchRuntime) -> None:
        super().__init__()
        self.norm = norm
        self.runtime = runtime

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        b, c = x.shape[:2]
        xg = x.reshape(b, norm.num_groups, -1).float()
        mean = xg.mean(dim=-1)
        var = xg.var(dim=-1, unbiased=False)
        shares = self.runtime.share(self, torch.stack([mean, var]))  # (world, 2, B, G)
        means, variances = shares[:, 0], shares[:, 1]
        g_mean = means.mean(dim=0)
        g_var = (variances + (means - g_mean) ** 2).mean(dim=0).clamp_min(0.0)
        y = (xg - g_mean[..., None]) * torch.rsqrt(g_var[..., None] + norm.eps)
        y = y.reshape(x.shape).to(x.dtype)
        if norm.affine:
            shape = (1, c) + (1,) * (x.ndim - 2)
            y = y * norm.weight.reshape(shape) + norm.bias.reshape(shape)
        return y


class PatchSelfAttnProcessor(_Layer):
    """Self-attention over the whole image: local queries, every rank's keys and values.

    Cross-attention (text keys) and masked calls are local and go to diffusers' processor.
    """

    def __init__(self, runtime: PatchRuntime) -> None:
        self.runtime = runtime
        self.local = attention_processor.AttnProcessor2_0()

    def __call__(
        self,
        attn: attention_processor.Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: object,
        **kwargs: object,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            return self.local(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if attn.spatial_norm is not None:
            raise NotImplementedError("patch-parallel self-attention has no spatial norm (SD UNets use none)")
        image = hidden_states.shape if hidden_states.ndim == 4 else None
        tokens = hidden_states if image is None else hidden_states.flatten(2).transpose(1, 2)  # (B, L, C)
        x = tokens if attn.group_norm is None else attn.group_norm(tokens.transpose(1, 2)).transpose(1, 2)
        kv = torch.cat([attn.to_k(x), attn.to_v(x)], dim=-1)  # one exchange for both
        kv = torch.cat(self.runtime.share(self, kv).unbind(0), dim=1)  # every rank's tokens, in row order
        key, value = kv.chunk(2, dim=-1)
        query, key, value = (_split_heads(t, attn.heads) for t in (attn.to_q(x), key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value).transpose(1, 2).flatten(2)  # (B, L, heads·d)
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        if image is not None:
            out = out.transpose(1, 2).reshape(image)
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads·d) → (B, heads, L, d)."""
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


@dataclasses.dataclass(frozen=True)
class Installed:
    """What :func:`install` replaced (for logs and the report)."""

    convs: int
    group_norms: int
    self_attentions: int


def install(unet: nn.Module, runtime: PatchRuntime) -> Installed:
    """Replace the UNet's spatial convolutions, GroupNorms and self-attention processors in place.

    1×1 convolutions, linear layers, LayerNorms, cross-attention and the feed-forward
    layers act on each position alone and stay as they are.
    """
    convs = norms = attns = 0
    for parent in list(unet.modules()):
        if isinstance(parent, (PatchConv2d, PatchGroupNorm)):
            continue
        for name, child in list(parent.named_children()):
            wrapper: PatchConv2d | PatchGroupNorm
            if isinstance(child, nn.Conv2d) and child.kernel_size[0] > 1:
                wrapper = PatchConv2d(child, runtime)
                convs += 1
            elif isinstance(child, nn.GroupNorm):
                wrapper = PatchGroupNorm(child, runtime)
                norms += 1
            else:
                continue
            setattr(parent, name, wrapper)
            runtime.layers.append(wrapper)
        if isinstance(parent, attention_processor.Attention) and not parent.is_cross_attention:
            processor = PatchSelfAttnProcessor(runtime)
            parent.set_processor(processor)  # type: ignore[arg-type]  # a processor by protocol, as diffusers' own
            runtime.layers.append(processor)
            attns += 1
    return Installed(convs, norms, attns)
