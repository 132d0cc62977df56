"""The ADM UNet with representation conditioning, as in the released RCDMs.

Module and parameter names reproduce the official state-dict keys exactly (``time_embed.0``, ``ssl_emb``,
``input_blocks.N.M.in_layers.0``, ``middle_block``, ``output_blocks``, ``out.2``, ``qkv``, ``proj_out``, ``op``,
``conv`` ...), so the released files load strictly. The numerics follow reference/paper.md ("Numerics that
state-dict compatibility depends on"): GroupNorm(32) computed in float32, scale-shift norm, the two attention
head orders, 1/sqrt(sqrt(head_channels)) on q and k (= scaled_dot_product_attention's default 1/sqrt(d)).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import rcdm_core as rc


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """t: (N,) timestep indices (unscaled) -> (N, dim) sinusoids, cosine half first."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype (stable under fp16/bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int, groups: int = 32) -> GroupNorm32:
    """The official GroupNorm: 32 groups (``norm_groups`` changes it for narrow models, see ADMUNet)."""
    return GroupNorm32(groups, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters: residual branches start as the identity (official initialisation)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class EmbeddingBlock(nn.Module):
    """A block that takes the (timestep + condition) embedding as a second argument."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class EmbeddingSequential(nn.Sequential):
    """nn.Sequential that passes ``emb`` to the children that take it (official ``TimestepEmbedSequential``)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, EmbeddingBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest x2, then (with ``use_conv``) a 3x3 conv stored as ``conv``."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """A stride-2 3x3 conv (``use_conv``) or a 2x2 average pool, stored as ``op``."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(EmbeddingBlock):
    """in_layers (GN, SiLU, conv3x3) -> + embedding (scale-shift: GN(h) * (1 + scale) + shift) -> out_layers
    (GN, SiLU, Dropout, zero conv3x3), plus a skip (identity or 1x1 conv). ``up``/``down`` resample both paths."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = True,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
        norm_groups: int = 32,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(
            normalization(channels, norm_groups), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            normalization(out_channels, norm_groups),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            # resample after the first GN + SiLU and before the conv; the skip input is resampled too
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def split_heads(
    qkv: torch.Tensor, heads: int, new_order: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv: (N, 3 * H * C, T) -> q, k, v each (N * H, C, T), in the legacy or the new head order.

    Legacy: reshape to (N * H, 3 * C, T) then split q, k, v; new: split q, k, v, then reshape each per head.
    """
    n, width, length = qkv.shape
    ch = width // (3 * heads)
    if new_order:
        q, k, v = qkv.chunk(3, dim=1)
        return (
            q.reshape(n * heads, ch, length),
            k.reshape(n * heads, ch, length),
            v.reshape(n * heads, ch, length),
        )
    q, k, v = qkv.reshape(n * heads, 3 * ch, length).split(ch, dim=1)
    return q, k, v


def attention_einsum(qkv: torch.Tensor, heads: int, new_order: bool) -> torch.Tensor:
    """The official einsum form: qkv (N, 3 * H * C, T) -> (N, H * C, T); softmax in float32."""
    n, _, length = qkv.shape
    q, k, v = split_heads(qkv, heads, new_order)
    scale = 1 / math.sqrt(math.sqrt(q.shape[1]))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(n, -1, length)


def attention_sdpa(qkv: torch.Tensor, heads: int, new_order: bool) -> torch.Tensor:
    """Same as :func:`attention_einsum` through ``scaled_dot_product_attention``: its default 1/sqrt(C) scale
    equals 1/sqrt(sqrt(C)) applied to q and to k; the fused kernels keep the softmax in float32."""
    n, _, length = qkv.shape
    q, k, v = split_heads(qkv, heads, new_order)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).reshape(n, -1, length)


class AttentionBlock(nn.Module):
    """GN -> 1x1 ``qkv`` (Conv1d over the flattened tokens) -> multi-head attention -> zero 1x1 ``proj_out``,
    added to the input."""

    use_sdpa: bool = True  # class-level switch: False selects the einsum form (tests, flop counting)

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_checkpoint: bool = False,
        use_new_attention_order: bool = False,
        norm_groups: int = 32,
    ):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise rc.ConfigError(
                    f"num_head_channels {num_head_channels} does not divide the {channels} channels of a level"
                )
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise rc.ConfigError(
                f"num_heads {self.num_heads} does not divide the {channels} channels of a level"
            )
        self.use_checkpoint = use_checkpoint
        self.new_order = use_new_attention_order
        self.norm = normalization(channels, norm_groups)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, *spatial = x.shape
        x = x.reshape(n, c, -1)
        qkv = self.qkv(self.norm(x))
        attend = attention_sdpa if self.use_sdpa else attention_einsum
        h = self.proj_out(attend(qkv, self.num_heads, self.new_order))
        return (x + h).reshape(n, c, *spatial)


DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


def parse_channel_mult(channel_mult: str | Sequence[float] | None, image_size: int) -> tuple[float, ...]:
    """``""``/None -> the official default for the image size; ``"1,2,2"`` or a tuple as given."""
    if channel_mult in (None, "", ()):
        if image_size not in DEFAULT_CHANNEL_MULT:
            sizes = ", ".join(map(str, sorted(DEFAULT_CHANNEL_MULT)))
            raise rc.ConfigError(
                f"image_size {image_size} has no default channel_mult (defaults exist for {sizes}); "
                f"give one, e.g. --channel-mult 1,2,2"
            )
        return DEFAULT_CHANNEL_MULT[image_size]
    if isinstance(channel_mult, str):
        try:
            mult = tuple(float(m) for m in channel_mult.split(","))
        except ValueError:
            raise rc.ConfigError(
                f"channel_mult {channel_mult!r}: write comma-separated numbers like 1,2,2"
            ) from None
    else:
        mult = tuple(float(m) for m in channel_mult)
    return tuple(int(m) if float(m).is_integer() else m for m in mult)


def parse_attention_resolutions(spec: str | Sequence[int], image_size: int) -> set[int]:
    """``"32,16,8"`` (pixel sizes) -> downsample factors {image_size // res}."""
    values = (
        [int(r) for r in spec.split(",") if r.strip()] if isinstance(spec, str) else [int(r) for r in spec]
    )
    for res in values:
        if res <= 0 or image_size % res:
            raise rc.ConfigError(f"attention_resolutions: {res} px does not divide image_size {image_size}")
    return {image_size // res for res in values}


class ADMUNet(rc.ConditionalDenoiser):
    """``model(x_t (N, C, S, S), t (N,) original indices, cond (N, cond_dim)) -> (N, 2C if learn_sigma else C, S, S)``.

    The condition enters only through ``ssl_emb`` (Linear cond_dim -> 4 * num_channels), added to the timestep
    embedding; every ResBlock turns that embedding into a GroupNorm scale and shift.

    ``norm_groups`` (not an official flag; default 32 = the official code, and what released files assume) sets
    every GroupNorm's group count. The official 32 groups at 128-256 channels put 4-8 channels in a group; a
    narrow model (32 channels) would get ONE channel per group, and GroupNorm then subtracts each channel's
    spatial mean per image, so the output head (GN -> SiLU -> conv) cannot pass on a per-image constant such
    as the global colour the condition carries. The demo's 32-channel RCDMs use 8 groups: trained the same
    way, their samples' mean colour varied 20x more with the condition after 500 steps than with 32 groups
    after 4000, and faithfulness went from near chance to well above it.
    """

    def __init__(
        self,
        image_size: int = 128,
        num_channels: int = 256,
        num_res_blocks: int = 2,
        channel_mult: str | Sequence[float] | None = "",
        attention_resolutions: str | Sequence[int] = "32,16,8",
        num_heads: int = 4,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_new_attention_order: bool = False,
        learn_sigma: bool = True,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = True,
        dropout: float = 0.0,
        use_fp16: bool = False,
        use_checkpoint: bool = False,
        cond_dim: int = 2048,
        diffusion_steps: int = 1000,
        noise_schedule: str = "linear",
        in_channels: int = 3,
        conv_resample: bool = True,
        norm_groups: int = 32,
    ):
        super().__init__()
        mult = parse_channel_mult(channel_mult, image_size)
        attention_ds = parse_attention_resolutions(attention_resolutions, image_size)
        _check_sizes(image_size, num_channels, mult, cond_dim, num_res_blocks, norm_groups)
        num_heads_upsample = num_heads if num_heads_upsample == -1 else num_heads_upsample
        self.image_size, self.cond_dim, self.learn_sigma = int(image_size), int(cond_dim), bool(learn_sigma)
        self.in_channels = in_channels
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.num_channels, self.channel_mult, self.use_fp16 = num_channels, mult, bool(use_fp16)
        self.flags: dict[str, Any] = dict(
            image_size=int(image_size), num_channels=int(num_channels), num_res_blocks=int(num_res_blocks),
            channel_mult=",".join(str(m) for m in mult),
            attention_resolutions=",".join(str(image_size // ds) for ds in sorted(attention_ds)),
            num_heads=int(num_heads), num_head_channels=int(num_head_channels),
            num_heads_upsample=int(num_heads_upsample), use_new_attention_order=bool(use_new_attention_order),
            learn_sigma=bool(learn_sigma), use_scale_shift_norm=bool(use_scale_shift_norm),
            resblock_updown=bool(resblock_updown), dropout=float(dropout), use_fp16=bool(use_fp16),
            use_checkpoint=bool(use_checkpoint), cond_dim=int(cond_dim), diffusion_steps=int(diffusion_steps),
            noise_schedule=str(noise_schedule), norm_groups=int(norm_groups),
        )  # fmt: skip
        emb_dim = num_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(num_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.ssl_emb = nn.Linear(cond_dim, emb_dim)

        def res(ch_in: int, ch_out: int, **kw: bool) -> ResBlock:
            return ResBlock(
                ch_in,
                emb_dim,
                dropout,
                ch_out,
                use_scale_shift_norm,
                use_checkpoint,
                norm_groups=norm_groups,
                **kw,
            )

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(
                ch, heads, num_head_channels, use_checkpoint, use_new_attention_order, norm_groups=norm_groups
            )

        ch = input_ch = int(mult[0] * num_channels)
        self.input_blocks = nn.ModuleList([EmbeddingSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_channels, ds = [ch], 1
        for level, m in enumerate(mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(m * num_channels))]
                ch = int(m * num_channels)
                if ds in attention_ds:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(EmbeddingSequential(*layers))
                skip_channels.append(ch)
            if level != len(mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, ch)
                self.input_blocks.append(EmbeddingSequential(down))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = EmbeddingSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), int(num_channels * m))]
                ch = int(num_channels * m)
                if ds in attention_ds:
                    layers.append(attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(
                        res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, ch)
                    )
                    ds //= 2
                self.output_blocks.append(EmbeddingSequential(*layers))
        self.out = nn.Sequential(
            normalization(ch, norm_groups),
            nn.SiLU(),
            zero_module(nn.Conv2d(input_ch, self.out_channels, 3, padding=1)),
        )
        self._down_factor = 2 ** (len(mult) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) noisy images; t: (N,) original timestep indices; cond: (N, cond_dim) -> (N, 2C|C, H, W)."""
        self._check_input(x, cond)
        emb = self.time_embed(timestep_embedding(t, self.num_channels)) + self.ssl_emb(cond.float())
        with _fp16_autocast(x.device, self.use_fp16):
            h, skips = x, []
            for block in self.input_blocks:
                h = block(h, emb)
                skips.append(h)
            h = self.middle_block(h, emb)
            for block in self.output_blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))

    def _check_input(self, x: torch.Tensor, cond: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise rc.ConfigError(
                f"the denoiser takes (N, {self.in_channels}, H, W) images, got {tuple(x.shape)}"
            )
        if x.shape[-1] % self._down_factor or x.shape[-2] % self._down_factor:
            raise rc.ConfigError(
                f"image size {tuple(x.shape[-2:])} is not divisible by {self._down_factor} "
                f"(2 ** (len(channel_mult) - 1)); this UNet takes sizes like {self.image_size}"
            )
        if cond.ndim != 2 or cond.shape[1] != self.cond_dim:
            raise rc.ConfigError(
                f"the denoiser was built for {self.cond_dim}-d conditions, got shape {tuple(cond.shape)}"
            )


def _fp16_autocast(device: torch.device, enabled: bool):
    # use_fp16 (official flag): the UNet body in half precision, embeddings and output head in float32.
    # When off, enter nothing: autocast(enabled=False) would switch off a caller's bf16/fp16 autocast.
    return torch.autocast(device.type, dtype=torch.float16) if enabled else contextlib.nullcontext()


def _check_sizes(
    image_size: int, num_channels: int, mult: tuple, cond_dim: int, num_res_blocks: int, norm_groups: int = 32
) -> None:
    if norm_groups <= 0:
        raise rc.ConfigError(f"norm_groups must be positive, got {norm_groups}")
    factor = 2 ** (len(mult) - 1)
    if image_size <= 0 or image_size % factor:
        raise rc.ConfigError(
            f"image_size {image_size} cannot go through {len(mult)} levels (channel_mult {mult}): it must be a "
            f"multiple of {factor}"
        )
    for m in mult:
        if int(m * num_channels) % norm_groups or int(m * num_channels) != m * num_channels:
            raise rc.ConfigError(
                f"num_channels {num_channels} x channel_mult {m} = {m * num_channels} is not a multiple of "
                f"{norm_groups} (GroupNorm uses norm_groups = {norm_groups} groups)"
            )
    if cond_dim <= 0:
        raise rc.ConfigError(f"cond_dim must be positive, got {cond_dim}")
    if num_res_blocks <= 0:
        raise rc.ConfigError(f"num_res_blocks must be positive, got {num_res_blocks}")
