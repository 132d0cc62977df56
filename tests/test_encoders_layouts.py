"""Every official checkpoint layout (shared/reference/checkpoints.md) read from a random file with the exact
nesting and key names: each tensor arrives unchanged, and the encoder computes what torchvision / timm does.

Real ResNet-50 / ViT-S/16 architectures with random weights; only head widths are shrunk (64, DINO out_dim 512).
"""

from __future__ import annotations

import argparse

import pytest
import timm
import torch
from rcdm_encoders import factories as F
from torch import nn
from torchvision.models import resnet50

from rcdm_core.errors import CheckpointError, ConfigError

W = 64  # shrunk head width


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Random values in every float tensor, BatchNorm statistics included (defaults would hide a skipped load)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim == 1:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5)
    return module.eval()


def _clone(state):
    return {k: v.clone() for k, v in state.items()}


@pytest.fixture(scope="module")
def rn50():
    """(torchvision ResNet-50 with random weights incl. fc, its state dict, input, reference pooled output)."""
    torch.manual_seed(0)
    model = _randomise(resnet50(), 1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    model.fc, fc = nn.Identity(), model.fc
    with torch.no_grad():
        ref = model(x)
    state = {**model.state_dict(), **{f"fc.{k}": v for k, v in fc.state_dict().items()}}
    return state, x, ref


def _heads():
    """Reference heads in the official layer order (shrunk widths), random weights."""
    torch.manual_seed(3)
    relu = nn.ReLU()
    return {
        "vicreg": nn.Sequential(
            nn.Linear(2048, W),
            nn.BatchNorm1d(W),
            relu,
            nn.Linear(W, W),
            nn.BatchNorm1d(W),
            relu,
            nn.Linear(W, W, bias=False),
        ),
        "barlow": nn.Sequential(
            nn.Linear(2048, W, bias=False),
            nn.BatchNorm1d(W),
            relu,
            nn.Linear(W, W, bias=False),
            nn.BatchNorm1d(W),
            relu,
            nn.Linear(W, W, bias=False),
        ),
        "spijkervet": nn.Sequential(nn.Linear(2048, W, bias=False), relu, nn.Linear(W, 32, bias=False)),
        "dino_rn50": nn.Sequential(nn.Linear(2048, W), nn.BatchNorm1d(W), nn.GELU(), nn.Linear(W, 256)),
        "simclr_vissl": nn.Sequential(nn.Linear(2048, W), relu, nn.Linear(W, 128)),
    }


def _prefixed(prefix: str, state: dict) -> dict:
    return {prefix + k: v for k, v in state.items()}


def _trunk(state):
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _layout_files(tmp, state):
    """name -> (path, encoder name, reference head or None, expected layout, expects [0,1] input)."""
    heads = {k: _randomise(v, i + 10) for i, (k, v) in enumerate(_heads().items())}
    trunk = _trunk(state)
    files = {}

    def save(name, obj):
        path = tmp / f"{name}.pth"
        torch.save(obj, path)
        return path

    files["vicreg_resnet50_pth"] = (
        save("vicreg_flat", _clone(trunk)),
        "vicreg-resnet50",
        None,
        "torchvision-resnet",
    )
    files["supervised"] = (
        save("supervised", _clone(state)),
        "supervised-resnet50",
        None,
        "torchvision-resnet",
    )
    files["simclr_v1"] = (
        save("simclr_v1", {"state_dict": _clone(state)}),
        "simclr-resnet50",
        None,
        "simclr-v1-converted",
    )
    files["spijkervet"] = (
        save(
            "spijkervet",
            {**_prefixed("encoder.", trunk), **_prefixed("projector.", heads["spijkervet"].state_dict())},
        ),
        "simclr-resnet50",
        heads["spijkervet"],
        "spijkervet-simclr",
    )
    files["vicreg_full"] = (
        save(
            "vicreg_full",
            {
                "epoch": 100,
                "model": {
                    **_prefixed("module.backbone.", trunk),
                    **_prefixed("module.projector.", heads["vicreg"].state_dict()),
                },
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
            },
        ),
        "vicreg-resnet50",
        heads["vicreg"],
        "vicreg-full",
    )
    loss_bn = _randomise(nn.BatchNorm1d(W, affine=False), 20)
    files["barlow_full"] = (
        save(
            "barlow_full",
            {
                "epoch": 1000,
                "model": {
                    **_prefixed("module.backbone.", trunk),
                    **_prefixed("module.projector.", heads["barlow"].state_dict()),
                    **_prefixed("module.bn.", loss_bn.state_dict()),
                },
                "optimizer": {"state": {}},
            },
        ),
        "barlow-twins-resnet50",
        (heads["barlow"], loss_bn),
        "barlow-twins-full",
    )
    b = heads["barlow"].state_dict()
    vissl_barlow_heads = {
        **{f"0.clf.0.{k[2:]}": v for k, v in b.items() if k.startswith("0.")},
        **{f"0.clf.1.{k[2:]}": v for k, v in b.items() if k.startswith("1.")},
        **{f"1.clf.0.{k[2:]}": v for k, v in b.items() if k.startswith("3.")},
        **{f"1.clf.1.{k[2:]}": v for k, v in b.items() if k.startswith("4.")},
        **{f"2.clf.0.{k[2:]}": v for k, v in b.items() if k.startswith("6.")},
    }

    def vissl(heads_state):
        return {
            "phase_idx": 999,
            "iteration": 5,
            "loss": {"state": 1},
            "classy_state_dict": {
                "train_phase_idx": 999,
                "base_model": {
                    "model": {"trunk": _prefixed("_feature_blocks.", trunk), "heads": heads_state}
                },
            },
        }

    files["vissl_barlow"] = (
        save("vissl_barlow", vissl(vissl_barlow_heads)),
        "barlow-twins-resnet50",
        heads["barlow"],
        "vissl",
    )
    s = heads["simclr_vissl"].state_dict()
    files["vissl_simclr"] = (
        save(
            "vissl_simclr",
            vissl(
                {
                    "0.clf.0.weight": s["0.weight"],
                    "0.clf.0.bias": s["0.bias"],
                    "1.clf.0.weight": s["2.weight"],
                    "1.clf.0.bias": s["2.bias"],
                }
            ),
        ),
        "simclr-resnet50",
        heads["simclr_vissl"],
        "vissl",
    )
    d = heads["dino_rn50"].state_dict()
    teacher = {
        **_prefixed("module.backbone.", trunk),
        **_prefixed("module.head.mlp.", d),
        "module.head.last_layer.weight": torch.randn(512, 256),
    }
    files["dino_rn50_full"] = (
        save(
            "dino_rn50_full",
            {
                "student": _clone(teacher),
                "teacher": teacher,
                "optimizer": {"state": {}},
                "epoch": 800,
                "args": argparse.Namespace(arch="resnet50", out_dim=60000),
                "dino_loss": {"center": torch.zeros(1, 512)},
            },
        ),
        "dino-resnet50",
        heads["dino_rn50"],
        "dino-full",
    )
    return files


EXPECTED_IGNORED = {
    "supervised": {"fc.weight", "fc.bias"},
    "simclr_v1": {"fc.weight", "fc.bias"},
    "vicreg_full": {"epoch", "optimizer"},
    "barlow_full": {"epoch", "optimizer"},
    "dino_rn50_full": {
        "student",
        "optimizer",
        "epoch",
        "args",
        "dino_loss",
        "teacher/module.head.last_layer.weight",
    },
}


@pytest.fixture(scope="module")
def layout_files(rn50, tmp_path_factory):
    return _layout_files(tmp_path_factory.mktemp("layouts"), rn50[0])


def test_every_resnet50_layout_loads_every_tensor_and_matches_torchvision(rn50, layout_files):
    state, x, ref = rn50
    trunk = _trunk(state)
    for name, (path, enc_name, head, layout) in layout_files.items():
        enc = F.build_named(enc_name, None, str(path), False)
        enc.module.eval()
        assert enc.meta["layout"] == layout, name
        assert enc.random_weights is False
        got = enc.module.backbone.state_dict()
        assert set(got) == set(trunk), name
        assert all(torch.equal(got[k], trunk[k]) for k in trunk), name
        unit = layout in ("simclr-v1-converted", "spijkervet-simclr")
        assert (enc.mean is None) == unit, name
        for key in EXPECTED_IGNORED.get(name, ()):
            assert any(i.endswith(key) or i == key for i in enc.meta["ignored"]), (
                name,
                key,
                enc.meta["ignored"],
            )
        with torch.no_grad():
            wanted = ["backbone"] + (["projector"] if head is not None else [])
            if isinstance(head, tuple):
                wanted.append("projector_bn")
            feats = enc.features(x, wanted)
            assert torch.equal(feats["backbone"], ref), name
            if head is None:
                assert "projector" not in enc.layers()
                continue
            ref_head, ref_bn = head if isinstance(head, tuple) else (head, None)
            ours = enc.module.projector.state_dict()
            theirs = ref_head.state_dict()
            assert sorted(v.shape for v in ours.values()) == sorted(v.shape for v in theirs.values())
            assert torch.allclose(feats["projector"], ref_head(ref), atol=1e-6, rtol=1e-5), name
            if ref_bn is not None:
                assert torch.equal(enc.module.projector_bn.running_mean, ref_bn.running_mean)
                assert torch.allclose(feats["projector_bn"], ref_bn(ref_head(ref)), atol=1e-6, rtol=1e-5)
                assert enc.layers()["projector_bn"] == W


def test_flat_keys_of_heads_are_the_official_ones(layout_files):
    """VICReg projector keys 0,1,3,4,6 and VISSL 0.clf.0 / 1.clf.1 arrive under the same names."""
    files = layout_files
    enc = F.build_named("vicreg-resnet50", None, str(files["vicreg_full"][0]), False)
    assert sorted({k.split(".")[0] for k in enc.module.projector.state_dict()}) == ["0", "1", "3", "4", "6"]
    enc = F.build_named("barlow-twins-resnet50", None, str(files["vissl_barlow"][0]), False)
    keys = set(enc.module.projector.state_dict())
    assert {
        "0.clf.0.weight",
        "0.clf.1.running_var",
        "1.clf.0.weight",
        "1.clf.1.weight",
        "2.clf.0.weight",
    } <= keys


def test_backbone_only_file_has_no_projector_and_says_so(rn50, tmp_path, manager):
    import rcdm_core as rc

    state, _, _ = rn50
    path = tmp_path / "resnet50.pth"
    torch.save(_trunk(state), path)
    with pytest.raises(ConfigError, match="holds no projector head"):
        rc.load_encoder("vicreg-resnet50", weights=str(path), layer="projector")


# ---- DINO ViT-S/16 -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vits():
    torch.manual_seed(4)
    model = _randomise(timm.create_model("vit_small_patch16_224", num_classes=0), 5)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = model(x)
    return model.state_dict(), x, ref


def _dino_vit_head():
    torch.manual_seed(7)
    gelu = nn.GELU()
    return _randomise(nn.Sequential(nn.Linear(384, W), gelu, nn.Linear(W, W), gelu, nn.Linear(W, 256)), 8)


def test_dino_vit_backbone_and_full_checkpoints(vits, tmp_path):
    state, x, ref = vits
    flat = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(_clone(state), flat)
    head = _dino_vit_head()
    teacher = {
        **_prefixed("backbone.", state),
        **_prefixed("head.mlp.", head.state_dict()),
        "head.last_layer.weight_g": torch.ones(512, 1),
        "head.last_layer.weight_v": torch.randn(512, 256),
    }
    student = {"module." + k: v + 1.0 for k, v in teacher.items()}
    full = tmp_path / "dino_full.pth"
    torch.save(
        {
            "student": student,
            "teacher": teacher,
            "optimizer": {"state": {}},
            "epoch": 100,
            "args": argparse.Namespace(arch="vit_small", patch_size=16),
            "dino_loss": {"center": torch.zeros(1, 512)},
            "fp16_scaler": {"scale": 1.0},
        },
        full,
    )

    enc = F.build_named("dino-vits16", None, str(flat), False)
    assert enc.meta["layout"] == "dino-vit-backbone" and "projector" not in enc.layers()
    got = enc.module.backbone.state_dict()
    assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(enc.features(x, ["backbone"])["backbone"], ref)

    enc = F.build_named("dino-vits16", None, str(full), False).to("cpu")
    enc.module.eval()
    assert enc.meta["layout"] == "dino-full"
    assert {"student", "optimizer", "args", "teacher/head.last_layer.weight_g"} <= set(enc.meta["ignored"])
    got = enc.module.backbone.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in enc.module.projector.state_dict().items())
    with torch.no_grad():
        feats = enc.features(x, ["backbone", "projector", "block:blocks.11"])
        assert torch.equal(feats["backbone"], ref)
        assert torch.allclose(feats["projector"], head(ref), atol=1e-6, rtol=1e-5)
        assert feats["block:blocks.11"].shape == (1, 197, 384)
    assert enc.layers()["projector"] == 256

    stud = F.build_named("dino-vits16", "student", str(full), False)
    assert torch.equal(stud.module.backbone.state_dict()["cls_token"], state["cls_token"] + 1.0)


def test_mis_shaped_key_names_the_key_and_both_shapes(vits, tmp_path):
    state, _, _ = vits
    bad = _clone(state)
    bad["pos_embed"] = torch.zeros(1, 50, 384)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match=r"pos_embed.*\(1, 50, 384\).*\(1, 197, 384\)"):
        F.build_named("dino-vits16", None, str(path), False)


def test_vit_file_given_to_a_resnet_encoder_is_refused(vits, tmp_path):
    state, _, _ = vits
    path = tmp_path / "vit.pth"
    torch.save(_clone(state), path)
    with pytest.raises(ConfigError, match="vit trunk"):
        F.build_named("dino-resnet50", None, str(path), False)
