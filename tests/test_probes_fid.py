"""FID proper through pytorch-fid's Inception network, loaded from a local weights file (random weights here)."""

from __future__ import annotations

import pytest
import rcdm_probes
import torch
from rcdm_probes.fidelity import fid_inception

import rcdm_core as rc
from rcdm_core.errors import CheckpointError
from tests.test_probes_models import arm, context, pixel_encoder, random_images

pfi = pytest.importorskip("pytorch_fid.inception")


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A state dict with the layout of pytorch-fid's pt_inception-2015-12-05 file, random values."""
    torch.manual_seed(0)
    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    path = tmp_path_factory.mktemp("fid") / "pt_inception.pth"
    torch.save(net.state_dict(), path)
    return path


def test_fid_inception_loads_the_local_file_strictly(inception_file):
    model = fid_inception(inception_file, torch.device("cpu"))
    state = torch.load(inception_file, weights_only=True)
    assert torch.equal(model.blocks[3][2].branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])
    assert not model.training and model.resize_input and model.normalize_input


def test_fid_inception_rejects_a_file_of_another_layout(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="not the pytorch-fid FID Inception weights"):
        fid_inception(bad, torch.device("cpu"))


@pytest.mark.slow
def test_fidelity_probe_reports_fid_with_inception_weights(inception_file, tmp_path, fresh_manager):
    fresh_manager.register_module(rcdm_probes, name="probes")
    # Inception at 299 px is the slow part on a shared CPU: two images only
    images = random_images(2)
    ctx = context([arm("a", pixel_encoder())], images, tmp_path, n_samples=1)
    torch.set_flush_denormal(True)  # random weights drive activations into denormals (slow on CPU)
    try:
        m = rc.run_probe("fidelity", ctx, inception_weights=str(inception_file)).metrics["a"]
    finally:
        torch.set_flush_denormal(False)
    assert m["fid"] == pytest.approx(0.0, abs=1e-6)  # exact decoder: samples are the images
