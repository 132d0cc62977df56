"""The ADM UNet denoiser (plugin rcdm_adm): release layout, numerics against a reference written here from
reference/paper.md, SDPA vs einsum attention, strict loading with flag inference, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rcdm_adm.loading import RELEASE_FLAGS, build, resolve_flags
from rcdm_adm.unet import AttentionBlock, attention_einsum, attention_sdpa, normalization

import rcdm_core as rc

LAYOUT = Path("/work/shared/reference/rcdm_adm128_layout.json")
if not LAYOUT.exists():
    LAYOUT = Path(__file__).resolve().parents[2] / "shared/reference/rcdm_adm128_layout.json"


def _release_layout() -> dict:
    return json.loads(LAYOUT.read_text())


@pytest.mark.skipif(not LAYOUT.exists(), reason="reference layout file not present")
def test_release_config_has_exactly_the_released_keys_shapes_and_parameter_count():
    ref = _release_layout()
    with torch.device("meta"):
        model = build(cond_dim=2048)  # the defaults are the release flags
    state = model.state_dict()
    assert list(state) == list(ref["layout"])
    assert {k: list(v.shape) for k, v in state.items()} == ref["layout"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"] == 422_603_782
    assert len(state) == ref["num_tensors"] == 494


@pytest.mark.skipif(not LAYOUT.exists(), reason="reference layout file not present")
@pytest.mark.parametrize("cond_dim", [128, 8192])
def test_release_layout_without_sidecar_infers_shapes_and_assumes_release_flags(cond_dim):
    layout = dict(_release_layout()["layout"])
    layout["ssl_emb.weight"] = [1024, cond_dim]
    state = {k: torch.empty(v, device="meta") for k, v in layout.items()}
    flags, assumed = resolve_flags(state, {}, "rcdm_ema_x.pt")
    assert assumed == {
        k: RELEASE_FLAGS[k]
        for k in (
            "image_size",
            "num_heads",
            "num_head_channels",
            "use_new_attention_order",
            "diffusion_steps",
            "noise_schedule",
            "norm_groups",
        )
    }
    assert flags["cond_dim"] == cond_dim and flags["channel_mult"] == "1,1,2,3,4"
    assert flags["attention_resolutions"] == "32,16,8" and flags["resblock_updown"] and flags["learn_sigma"]
    with torch.device("meta"):
        rebuilt = build(**flags)
    assert {k: list(v.shape) for k, v in rebuilt.state_dict().items()} == layout


# ---- the in-test reference: reference/paper.md's description, written functionally over a state dict ---------


def _ref_forward(sd, x, t, cond, *, mc, mult, nrb, attn_ds, heads, new_order, updown, scale_shift=True):
    silu = F.silu

    def gn(h, p):  # GroupNorm(32) in float32, cast back
        return F.group_norm(h.float(), 32, sd[p + ".weight"], sd[p + ".bias"], eps=1e-5).type(h.dtype)

    def conv(h, p, stride=1):
        w = sd[p + ".weight"]
        if w.ndim == 3:
            return F.conv1d(h, w, sd[p + ".bias"])
        return F.conv2d(h, w, sd[p + ".bias"], stride=stride, padding=w.shape[-1] // 2)

    def lin(h, p):
        return h @ sd[p + ".weight"].T + sd[p + ".bias"]

    def res(h, emb, p, up=False, down=False):
        a = silu(gn(h, p + ".in_layers.0"))
        if up:
            a, h = (
                F.interpolate(a, scale_factor=2.0, mode="nearest"),
                F.interpolate(h, scale_factor=2.0, mode="nearest"),
            )
        if down:
            a, h = F.avg_pool2d(a, 2), F.avg_pool2d(h, 2)
        a = conv(a, p + ".in_layers.2")
        e = lin(silu(emb), p + ".emb_layers.1")[:, :, None, None]
        if scale_shift:
            scale, shift = e[:, : e.shape[1] // 2], e[:, e.shape[1] // 2 :]
            a = silu(gn(a, p + ".out_layers.0") * (1 + scale) + shift)
        else:
            a = silu(gn(a + e, p + ".out_layers.0"))
        a = conv(a, p + ".out_layers.3")
        skip = conv(h, p + ".skip_connection") if p + ".skip_connection.weight" in sd else h
        return skip + a

    def attention(h, p):
        n, c, hh, ww = h.shape
        flat = h.reshape(n, c, -1)
        qkv = conv(gn(flat, p + ".norm"), p + ".qkv")
        ch = c // heads
        if new_order:
            q, k, v = (part.reshape(n * heads, ch, -1) for part in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(n * heads, 3 * ch, -1).split(ch, dim=1)
        s = 1 / math.sqrt(math.sqrt(ch))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * s, k * s).float(), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(n, c, -1)
        return (flat + conv(a, p + ".proj_out")).reshape(n, c, hh, ww)

    half = mc // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    temb = torch.cat([torch.cos(t[:, None].float() * freqs), torch.sin(t[:, None].float() * freqs)], dim=1)
    emb = lin(silu(lin(temb, "time_embed.0")), "time_embed.2") + lin(cond, "ssl_emb")

    h = conv(x, "input_blocks.0.0")
    stack, blk, ds = [h], 1, 1
    for level in range(len(mult)):
        for _ in range(nrb):
            h = res(h, emb, f"input_blocks.{blk}.0")
            if ds in attn_ds:
                h = attention(h, f"input_blocks.{blk}.1")
            stack.append(h)
            blk += 1
        if level != len(mult) - 1:
            p = f"input_blocks.{blk}.0"
            h = res(h, emb, p, down=True) if updown else conv(h, p + ".op", stride=2)
            stack.append(h)
            blk, ds = blk + 1, ds * 2
    h = res(attention(res(h, emb, "middle_block.0"), "middle_block.1"), emb, "middle_block.2")
    blk = 0
    for level in reversed(range(len(mult))):
        for i in range(nrb + 1):
            h = res(torch.cat([h, stack.pop()], dim=1), emb, f"output_blocks.{blk}.0")
            j = 1
            if ds in attn_ds:
                h, j = attention(h, f"output_blocks.{blk}.1"), 2
            if level and i == nrb:
                p = f"output_blocks.{blk}.{j}"
                if updown:
                    h = res(h, emb, p, up=True)
                else:
                    h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), p + ".conv")
                ds //= 2
            blk += 1
    return conv(silu(gn(h, "out.0")), "out.2")


def _randomise(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if (name.endswith("weight") and p.ndim == 1) else 0.0  # norm gains around 1
            p.copy_(base + torch.randn(p.shape, generator=gen) * (0.3 if p.ndim > 1 else 0.1))


@pytest.mark.parametrize(
    "new_order,updown,scale_shift,heads,head_channels",
    [
        (False, True, True, 2, -1),
        (True, True, True, 2, -1),
        (False, False, True, 1, 32),
        (True, False, False, 4, -1),
    ],
)
def test_forward_matches_the_paper_reference_with_all_weights_random(
    new_order, updown, scale_shift, heads, head_channels
):
    flags = dict(
        image_size=16,
        num_channels=32,
        channel_mult="1,2",
        num_res_blocks=1,
        attention_resolutions="8",
        num_heads=heads,
        num_head_channels=head_channels,
        use_new_attention_order=new_order,
        resblock_updown=updown,
        use_scale_shift_norm=scale_shift,
        cond_dim=8,
        learn_sigma=True,
    )
    model = build(**flags).eval()
    _randomise(model)
    gen = torch.Generator().manual_seed(1)
    x, cond = torch.randn(2, 3, 16, 16, generator=gen), torch.randn(2, 8, generator=gen)
    t = torch.tensor([0, 731])
    eff_heads = heads if head_channels == -1 else None
    sd = {k: v.detach() for k, v in model.state_dict().items()}

    def ref(nh):
        return _ref_forward(
            sd,
            x,
            t,
            cond,
            mc=32,
            mult=(1, 2),
            nrb=1,
            attn_ds={2},
            heads=nh,
            new_order=new_order,
            updown=updown,
            scale_shift=scale_shift,
        )

    with torch.no_grad():
        out = model(x, t, cond)
        # num_head_channels 32 -> heads = channels // 32, which differs per level: 64 channels -> 2 heads
        expected = ref(eff_heads) if eff_heads else ref(2)
    assert out.shape == (2, 6, 16, 16)
    assert out.abs().mean() > 1e-2  # random weights: the output is not the zero-init output
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_the_two_attention_orders_give_different_numbers_for_the_same_weights():
    base = dict(
        image_size=16,
        num_channels=32,
        channel_mult="1,2",
        num_res_blocks=1,
        attention_resolutions="8",
        num_heads=4,
        cond_dim=8,
    )
    legacy, new = build(**base, use_new_attention_order=False), build(**base, use_new_attention_order=True)
    _randomise(legacy)
    new.load_state_dict(legacy.state_dict())
    x, t, c = torch.randn(1, 3, 16, 16), torch.tensor([5]), torch.randn(1, 8)
    with torch.no_grad():
        assert not torch.allclose(legacy(x, t, c), new(x, t, c), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("new_order", [False, True])
@pytest.mark.parametrize("heads,ch,tokens", [(4, 64, 64), (2, 128, 256), (1, 256, 64)])
def test_sdpa_equals_the_einsum_form_within_1e_4_relative(new_order, heads, ch, tokens):
    gen = torch.Generator().manual_seed(heads * ch)
    qkv = torch.randn(2, 3 * heads * ch, tokens, generator=gen) * 3
    a, b = attention_sdpa(qkv, heads, new_order), attention_einsum(qkv, heads, new_order)
    rel = ((a - b).norm() / b.norm()).item()
    assert rel < 1e-4 and (a - b).abs().max() < 1e-4 * b.abs().max()


def test_einsum_switch_gives_the_same_model_output():
    model = build(
        image_size=16,
        num_channels=32,
        channel_mult="1,2",
        num_res_blocks=1,
        attention_resolutions="8,16",
        num_heads=2,
        cond_dim=8,
    )
    _randomise(model, seed=3)
    x, t, c = torch.randn(2, 3, 16, 16), torch.tensor([1, 999]), torch.randn(2, 8)
    with torch.no_grad():
        a = model(x, t, c)
        try:
            AttentionBlock.use_sdpa = False
            b = model(x, t, c)
        finally:
            AttentionBlock.use_sdpa = True
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_gradient_checkpointing_gives_the_same_gradients():
    flags = dict(
        image_size=16,
        num_channels=32,
        channel_mult="1,2",
        num_res_blocks=1,
        attention_resolutions="8",
        cond_dim=8,
        dropout=0.0,
    )
    plain, ckpt = build(**flags), build(**flags, use_checkpoint=True)
    _randomise(plain)
    ckpt.load_state_dict(plain.state_dict())
    x, t, c = torch.randn(2, 3, 16, 16), torch.tensor([3, 500]), torch.randn(2, 8)
    plain(x, t, c).square().mean().backward()
    ckpt(x, t, c).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_autocast_runs_and_stays_close_to_fp32():
    model = build(
        image_size=16,
        num_channels=32,
        channel_mult="1,2",
        num_res_blocks=1,
        attention_resolutions="8",
        cond_dim=8,
    )
    _randomise(model, seed=4)
    x, t, c = torch.randn(2, 3, 16, 16), torch.tensor([3, 500]), torch.randn(2, 8)
    with torch.no_grad():
        ref = model(x, t, c)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t, c)
    assert ((low.float() - ref).norm() / ref.norm()) < 0.05


# ---- loading and bad input --------------------------------------------------------------------------------------


def test_load_denoiser_infers_shapes_and_loads_every_tensor_unchanged(tmp_path, manager, capsys):
    model = build(
        image_size=32,
        num_channels=32,
        channel_mult="1,2,2",
        num_res_blocks=2,
        attention_resolutions="16",
        num_heads=1,
        resblock_updown=False,
        cond_dim=12,
        learn_sigma=False,
    )
    _randomise(model, seed=5)
    torch.save(model.state_dict(), tmp_path / "ema_0.9999_000010.pt")
    loaded = rc.load_denoiser(tmp_path / "ema_0.9999_000010.pt", image_size=32, num_heads=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert (loaded.cond_dim, loaded.learn_sigma, loaded.flags["resblock_updown"]) == (12, False, False)
    assert loaded.flags["attention_resolutions"] == "16" and loaded.flags["channel_mult"] == "1,2,2"
    err = capsys.readouterr().err
    assert "assumed" in err and "use_new_attention_order=False" in err and "image_size" not in err


def test_a_mis_shaped_tensor_names_the_key_and_both_shapes(tmp_path, manager):
    model = build(
        image_size=16,
        num_channels=32,
        channel_mult="1,2",
        num_res_blocks=1,
        attention_resolutions="8",
        cond_dim=8,
    )
    state = model.state_dict()
    state["middle_block.1.qkv.weight"] = torch.zeros(192, 64, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(
        rc.CheckpointError, match=r"middle_block\.1\.qkv\.weight.*\(192, 64, 3\).*\(192, 64, 1\)"
    ):
        rc.load_denoiser(tmp_path / "bad.pt", image_size=16)


def test_a_flag_that_contradicts_the_file_is_an_error_naming_both_values(tmp_path, manager):
    model = build(
        image_size=16,
        num_channels=32,
        channel_mult="1,2",
        num_res_blocks=1,
        attention_resolutions="8",
        cond_dim=8,
    )
    torch.save(model.state_dict(), tmp_path / "m.pt")
    with pytest.raises(rc.CheckpointError, match="cond_dim is 8 in the file but 16 was given"):
        rc.load_denoiser(tmp_path / "m.pt", image_size=16, cond_dim=16)


@pytest.mark.parametrize(
    "flags,match",
    [
        (dict(image_size=50, channel_mult="1,2,2"), "image_size 50 cannot go through 3 levels"),
        (dict(image_size=48), "image_size 48 has no default channel_mult"),
        (dict(image_size=32, channel_mult="1,2", attention_resolutions="12"), "12 px does not divide"),
        (dict(image_size=32, channel_mult="1,2", num_channels=48), "not a multiple of 32"),
        (dict(image_size=32, channel_mult="1,2", num_channels=32, not_a_flag=1), "unknown flag 'not_a_flag'"),
    ],
)
def test_impossible_configurations_are_clear_errors(flags, match):
    with pytest.raises(rc.ConfigError, match=match):
        build(**{"num_channels": 32, "attention_resolutions": "", **flags})


def test_an_image_the_unet_cannot_take_is_a_clear_error():
    model = build(
        image_size=16,
        num_channels=32,
        channel_mult="1,2,2",
        num_res_blocks=1,
        attention_resolutions="",
        cond_dim=8,
    )
    with pytest.raises(rc.ConfigError, match=r"not divisible by 4"):
        model(torch.randn(1, 3, 18, 18), torch.tensor([1]), torch.randn(1, 8))
    with pytest.raises(rc.ConfigError, match="built for 8-d conditions"):
        model(torch.randn(1, 3, 16, 16), torch.tensor([1]), torch.randn(1, 9))


def test_official_string_flags_are_accepted():
    model = build(
        image_size="32",
        num_channels=32,
        channel_mult="1,2",
        num_res_blocks=1,
        attention_resolutions="16",
        learn_sigma="False",
        resblock_updown="True",
        cond_dim=4,
    )
    assert model.learn_sigma is False and model.flags["resblock_updown"] is True


def test_registered_through_the_entry_point(manager):
    model = rc.build_denoiser(
        "adm",
        image_size=16,
        num_channels=32,
        channel_mult="1,2",
        num_res_blocks=1,
        attention_resolutions="8",
        cond_dim=8,
    )
    assert isinstance(model, rc.ConditionalDenoiser) and model.diffusion_steps == 1000
    assert model.noise_schedule == "linear" and model.cond_dim == 8 and model.image_size == 16


def test_norm_groups_sets_every_groupnorm_and_is_checked():
    m = build(
        image_size=16, num_channels=32, channel_mult="1,2", num_res_blocks=1, attention_resolutions="8",
        cond_dim=4, norm_groups=8,
    )  # fmt: skip
    norms = [mod for mod in m.modules() if isinstance(mod, torch.nn.GroupNorm)]
    assert norms and {mod.num_groups for mod in norms} == {8} and m.flags["norm_groups"] == 8
    small = dict(image_size=16, num_channels=32, channel_mult="1,2", attention_resolutions="8", cond_dim=4)
    assert {mod.num_groups for mod in build(**small).modules() if isinstance(mod, torch.nn.GroupNorm)} == {32}
    with pytest.raises(rc.ConfigError, match="multiple of 24"):
        build(**small, norm_groups=24)


def test_one_channel_per_group_cannot_carry_a_per_image_constant_to_the_output():
    # Why norm_groups exists: the output head is GN -> SiLU -> conv. With one channel per group GN removes
    # every channel's spatial mean, so features that differ between two images only by a constant per
    # channel (what a global colour from the condition looks like) give the same output; with 4 channels per
    # group the differences between channels of a group survive.
    torch.manual_seed(0)
    h = torch.randn(1, 32, 8, 8)
    shift = torch.randn(1, 32, 1, 1)
    one = normalization(32, 32)
    four = normalization(32, 8)
    assert torch.allclose(one(h), one(h + shift), atol=1e-5)
    assert (four(h) - four(h + shift)).abs().max() > 0.1


def test_a_sidecar_without_norm_groups_loads_with_32_silently(tmp_path):
    # Sidecars written before the flag existed give every other flag; 32 groups was the only choice then.
    flags = dict(image_size=16, num_channels=32, channel_mult="1,2", attention_resolutions="8", cond_dim=4)
    m = build(**flags)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    given = {k: v for k, v in m.flags.items() if k != "norm_groups"}
    resolved, assumed = resolve_flags(state, given, tmp_path / "old.pt")
    assert resolved["norm_groups"] == 32 and assumed == {}
    resolved, assumed = resolve_flags(state, {**given, "norm_groups": 8}, tmp_path / "new.pt")
    assert resolved["norm_groups"] == 8 and assumed == {}
