"""Checkpoint reader rules (prefixes, refusal, bad files), timm and open_clip files, ssl-small, random weights."""

from __future__ import annotations

import json

import open_clip
import pytest
import timm
import torch
from rcdm_encoders import checkpoints as C
from rcdm_encoders import factories as F
from rcdm_encoders import small

import rcdm_core as rc
from rcdm_core.errors import CheckpointError, ConfigError

PREFIXES = [
    "module.",
    "backbone.",
    "encoder.",
    "_feature_blocks.",
    "module.backbone.",
    "module.encoder.",
    "module.module.",
]


def test_strip_prefixes_only_at_the_start_never_eating_letters():
    for key in ("bn1.weight", "conv1.weight", "bn1.running_mean", "layer1.0.bn1.bias", "encoder_norm.weight"):
        for prefix in PREFIXES:
            assert C.strip_prefixes(prefix + key, tuple(p for p in PREFIXES)) == key
        assert (
            C.strip_prefixes(key, ("backbone.", "module.", "encoder.")) == key
        )  # lstrip would eat b / c / e
    assert C.strip_prefixes("x.module.y", ("module.",)) == "x.module.y"


def _tiny_trunk(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return small.SmallResNet((4, 4, 8, 8), (1, 1, 1, 1)).state_dict()


@pytest.mark.parametrize(
    "prefix", ["module.", "backbone.", "module.backbone.", "encoder.", "module.encoder."]
)
def test_every_wrapper_prefix_reaches_the_torchvision_names(prefix, tmp_path):
    trunk = _tiny_trunk()
    path = tmp_path / "f.pth"
    torch.save({prefix + k: v for k, v in trunk.items()}, path)
    ckpt = C.read_checkpoint(path)
    assert set(ckpt.trunk) == set(trunk) and {"bn1.weight", "conv1.weight"} <= set(ckpt.trunk)
    assert all(torch.equal(ckpt.trunk[k], trunk[k]) for k in trunk)


def test_vissl_feature_blocks_prefix_is_stripped(tmp_path):
    trunk = _tiny_trunk()
    path = tmp_path / "vissl.torch"
    torch.save(
        {
            "classy_state_dict": {
                "base_model": {
                    "model": {"trunk": {"_feature_blocks." + k: v for k, v in trunk.items()}, "heads": {}}
                }
            }
        },
        path,
    )
    ckpt = C.read_checkpoint(path)
    assert ckpt.layout == "vissl" and set(ckpt.trunk) == set(trunk) and ckpt.head is None


class _Evil:
    def __reduce__(self):
        return (print, ("this would run",))


def test_a_pickle_that_runs_code_is_refused_naming_the_global(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _tiny_trunk(), "hook": _Evil()}, path)
    with pytest.raises(CheckpointError, match=r"print.*--trust-checkpoint"):
        C.read_checkpoint(path)


def test_a_file_of_no_known_layout_lists_its_keys_and_the_layouts_tried(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"weights_here": {"a": 1}, "version": 3}, path)
    with pytest.raises(CheckpointError, match=r"weights_here, version.*layouts tried: dino-full"):
        C.read_checkpoint(path)
    torch.save({"resnet": {"net.0.0.weight": torch.zeros(1)}, "head": {}}, path)
    with pytest.raises(CheckpointError, match="SimCLRv2"):
        C.read_checkpoint(path)


def test_missing_key_is_named(tmp_path):
    trunk = _tiny_trunk()
    del trunk["layer2.0.bn1.running_var"]
    path = tmp_path / "m.pth"
    torch.save({"backbone." + k: v for k, v in trunk.items()}, path)
    with pytest.raises(CheckpointError, match="layer2.0.bn1.running_var"):
        F.build_small(None, str(path), False)


# ---- ssl-small ---------------------------------------------------------------------------------------------------
def _ssl_small_file(tmp_path, method="simclr"):
    torch.manual_seed(1)
    trunk = small.SmallResNet((4, 8, 8, 16), (1, 2, 1, 1))
    proj = F.small_projector(16, method, hidden=12, out=6)
    with torch.no_grad():
        for m in proj.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    state = {
        **{"backbone." + k: v for k, v in trunk.state_dict().items()},
        **{"projector." + k: v for k, v in proj.state_dict().items()},
    }
    path = tmp_path / "ssl_small.pt"
    torch.save(state, path)
    path.with_suffix(".json").write_text(
        json.dumps(
            {
                "method": method,
                "architecture": {"input_size": 24, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
            }
        )
    )
    return path, state, trunk.eval(), proj.eval()


def test_ssl_small_file_loads_back_exactly_with_backbone_and_projector(tmp_path, manager):
    path, state, trunk, proj = _ssl_small_file(tmp_path)
    rep = rc.load_encoder("ssl-small", weights=str(path), layer="projector")
    enc = rep.encoder
    assert enc.meta["layout"] == "rcdm-ssl" and enc.input_size == 24 and not enc.random_weights
    got = {f"backbone.{k}": v for k, v in enc.module.backbone.state_dict().items()}
    got.update({f"projector.{k}": v for k, v in enc.module.projector.state_dict().items()})
    assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)
    assert enc.layers() == {
        "backbone": 16,
        "projector": 6,
        "block:layer1": 4,
        "block:layer2": 8,
        "block:layer3": 8,
        "block:layer4": 16,
    }
    pixels = torch.rand(3, 3, 24, 24)
    with torch.no_grad():
        want = proj(trunk(pixels * 2 - 1))
    assert torch.allclose(rep.encode(pixels), want, atol=1e-6)


def test_features_stop_at_the_deepest_layer_needed(tmp_path):
    path, *_ = _ssl_small_file(tmp_path)
    enc = F.build_small(None, str(path), False)
    calls = []
    enc.module.backbone.layer3.register_forward_hook(lambda *a: calls.append("layer3"))
    enc.module.projector.register_forward_hook(lambda *a: calls.append("projector"))
    x = torch.randn(2, 3, 24, 24)
    out = enc.features(x, ["block:layer2"])
    assert out["block:layer2"].shape == (2, 8, 12, 12) and calls == []
    enc.features(x, ["backbone", "block:layer1"])
    assert calls == ["layer3"]
    enc.features(x, ["projector"])
    assert calls == ["layer3", "layer3", "projector"]


def test_random_weights_are_flagged_and_announced(capsys, manager):
    rep = rc.load_encoder("ssl-small", layer="backbone")
    assert rep.encoder.random_weights and rep.encoder.meta["layout"] == "random"
    assert "RANDOM weights" in capsys.readouterr().err
    assert rep.meta()["random_weights"] is True


def test_random_dino_vit_has_the_official_head_width():
    enc = F.build_named("dino-vits16", None, None, False)
    assert enc.layers()["projector"] == 256 and enc.layers()["backbone"] == 384
    widths = [m.out_features for m in enc.module.projector if isinstance(m, torch.nn.Linear)]
    assert widths == [2048, 2048, 256]


def test_a_file_of_another_method_is_refused_with_the_right_encoder_named(tmp_path):
    path, *_ = _ssl_small_file(tmp_path)
    with pytest.raises(ConfigError, match="use --encoder ssl-small"):
        F.build_named("vicreg-resnet50", None, str(path), False)


# ---- layer selectors --------------------------------------------------------------------------------------------
def test_selectors_pool_blocks_and_list_layers_on_error(tmp_path, manager):
    path, *_ = _ssl_small_file(tmp_path)
    rep = rc.load_encoder("ssl-small", weights=str(path), layer="block:layer3:avg")
    x = torch.rand(2, 3, 24, 24)
    feat = rep.encoder.features(rep.preprocess(x), ["block:layer3"])["block:layer3"]
    assert torch.equal(rep.encode(x), feat.mean(dim=(2, 3)))
    with pytest.raises(ConfigError, match=r"no layer 'block:layer9'.*block:layer2 \(8\)"):
        rc.load_encoder("ssl-small", weights=str(path), layer="block:layer9")
    sel = rc.api.get_selector("block:blocks.3:avg")
    tokens = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    assert torch.equal(sel.reduce("block:blocks.3:avg", tokens), tokens[:, 1:].mean(1))
    assert torch.equal(sel.reduce("block:blocks.3:cls", tokens), tokens[:, 0])
    assert torch.equal(sel.reduce("block:blocks.3", tokens), tokens[:, 0])
    with pytest.raises(ConfigError, match="no class token"):
        sel.reduce("block:layer1:cls", torch.zeros(1, 2, 3, 3))
    names = sel.names(rep.encoder)
    assert names["block:layer4:avg"] == 16 and "block:layer4:cls" not in names


# ---- timm and open_clip -----------------------------------------------------------------------------------------
def test_timm_file_with_classifier_and_module_prefix_loads_strictly(tmp_path):
    torch.manual_seed(2)
    full = timm.create_model("test_resnet", num_classes=1000).eval()
    path = tmp_path / "timm.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in full.state_dict().items()}, "epoch": 3}, path)
    enc = F.build_timm("test_resnet", str(path), False)
    own = enc.module.backbone.state_dict()
    theirs = full.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in own.items())
    assert {"fc.weight", "fc.bias", "epoch"} <= set(enc.meta["ignored"])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = full.forward_head(full.forward_features(x), pre_logits=True)
        assert torch.allclose(enc.features(x, ["backbone"])["backbone"], want, atol=1e-6)
    assert set(enc.layers()) >= {"backbone", "block:layer1"}


def test_timm_vit_file_goes_through_the_position_embedding_filter(tmp_path):
    torch.manual_seed(3)
    src = timm.create_model("test_vit", num_classes=0, img_size=64)
    path = tmp_path / "vit.pth"
    torch.save(src.state_dict(), path)
    enc = F.build_timm("test_vit", str(path), False)
    pe = enc.module.backbone.pos_embed
    assert pe.shape != src.pos_embed.shape  # resampled to the model's grid, not silently random
    assert torch.equal(
        enc.module.backbone.state_dict()["blocks.0.attn.qkv.weight"],
        src.state_dict()["blocks.0.attn.qkv.weight"],
    )


@pytest.fixture
def tiny_clip(tmp_path):
    cfg_dir = tmp_path / "clip_cfg"
    cfg_dir.mkdir()
    (cfg_dir / "rcdm-tiny-clip.json").write_text(
        json.dumps(
            {
                "embed_dim": 16,
                "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
                "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 16, "heads": 1, "layers": 1},
            }
        )
    )
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(4)
    model = open_clip.create_model("rcdm-tiny-clip").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = tmp_path / "epoch_1.pt"
    torch.save(
        {"epoch": 1, "name": "tiny", "state_dict": {"module." + k: v for k, v in model.state_dict().items()}},
        path,
    )
    return model, path


def test_clip_training_layout_loads_every_tensor_and_matches_open_clip(tiny_clip):
    model, path = tiny_clip
    enc = F.build_clip("rcdm-tiny-clip", str(path), False)
    enc.module.eval()
    theirs = model.visual.state_dict()
    own = enc.module.backbone.state_dict()
    assert set(own) == set(theirs) and all(torch.equal(own[k], theirs[k]) for k in theirs)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = enc.features(x, ["backbone", "block:blocks.1"])
        assert torch.equal(feats["backbone"], model.encode_image(x))
    assert feats["block:blocks.1"].shape == (2, 1 + 16, 32)
    assert enc.mean == pytest.approx(F.CLIP_MEAN_STD[0]) and enc.input_size == 32
    assert enc.layers()["backbone"] == 16
