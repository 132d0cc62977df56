"""The shared training loop (rcdm_core.training): resume is exact, the NaN guard skips and stops, files and names."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from rcdm_core import training
from rcdm_core.errors import ConfigError, RcdmError
from rcdm_core.io import safe_load
from rcdm_core.training import BatchIndexer, TrainConfig, example_generator, find_resume_step, train

N, D = 24, 5


def _data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen)
    y = x @ torch.randn(D, 1, generator=gen) + 0.1
    return x, y


def _model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(D, 16), nn.SiLU(), nn.Dropout(0.2), nn.Linear(16, 1))


def _setup(global_batch=8, seed=0):
    x, y = _data()
    indexer = BatchIndexer(N, global_batch, seed=seed)

    def get_batch(step):
        idx = indexer.local_indices(step)
        return x[idx], y[idx], idx

    def loss_fn(model, batch, step):
        xb, yb, idx = batch
        # per-example noise keyed on (seed, step, id): independent of how the batch is split
        noise = torch.stack([torch.randn(D, generator=example_generator(seed, step, int(i))) for i in idx])
        err = (model(xb + 0.01 * noise) - yb).pow(2).mean()
        return err, {"mse": float(err.detach())}

    return get_batch, loss_fn


def _cfg(tmp_path, **kw):
    base = dict(
        out_dir=tmp_path,
        steps=6,
        global_batch=8,
        lr=1e-2,
        ema_rates=(0.9, 0.99),
        save_interval=3,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def test_files_use_official_names_and_sidecars(tmp_path):
    get_batch, loss_fn = _setup()
    res = train(_model(), loss_fn, get_batch, _cfg(tmp_path), sidecar={"encoder": "e", "layer": "backbone"})
    names = sorted(p.name for p in tmp_path.iterdir())
    for step in ("000003", "000006"):
        for stem in (f"model{step}", f"ema_0.9_{step}", f"ema_0.99_{step}"):
            assert f"{stem}.pt" in names and f"{stem}.json" in names
        assert f"opt{step}.pt" in names
    side = json.loads((tmp_path / "ema_0.99_000006.json").read_text())
    assert side["encoder"] == "e" and side["step"] == 6 and side["kind"] == "ema" and side["ema_rate"] == 0.99
    assert "mse" in side["losses"]
    assert (tmp_path / "losses.csv").read_text().splitlines()[0].startswith("step,loss,mse")
    assert len(res.rows) == 6 and res.step == 6
    # a plain state dict, loadable as it is
    assert set(safe_load(tmp_path / "model000006.pt")) == set(_model().state_dict())


def test_ema_is_the_exponential_average_of_the_weights(tmp_path):
    get_batch, loss_fn = _setup()
    model = _model()
    w0 = model[0].weight.detach().clone()
    seen = []
    cfg = _cfg(tmp_path, steps=2, save_interval=2, ema_rates=(0.5,))

    def recording_loss(m, batch, step):
        seen.append(None)
        return loss_fn(m, batch, step)

    train(model, recording_loss, get_batch, cfg)
    # ema after 2 steps with rate 0.5: 0.25 w0 + 0.25 w1 + 0.5 w2; recompute w1 by a fresh 1-step run
    m1 = _model()
    train(m1, loss_fn, get_batch, _cfg(tmp_path / "one", steps=1, save_interval=1, ema_rates=(0.5,)))
    expected = 0.25 * w0 + 0.25 * m1[0].weight.detach() + 0.5 * model[0].weight.detach()
    ema = safe_load(tmp_path / "ema_0.5_000002.pt")
    torch.testing.assert_close(ema["0.weight"], expected, rtol=0, atol=1e-6)


def test_resume_gives_bitwise_the_uninterrupted_weights(tmp_path):
    get_batch, loss_fn = _setup()
    full = _model()
    train(full, loss_fn, get_batch, _cfg(tmp_path / "full"))
    part = _model()
    train(part, loss_fn, get_batch, _cfg(tmp_path / "part", steps=3))
    resumed = _model()  # a fresh process would start from fresh weights
    res = train(resumed, loss_fn, get_batch, _cfg(tmp_path / "part", resume=True))
    assert res.resumed_from == 3
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    for name in ("ema_0.99_000006.pt", "opt000006.pt"):
        fa, fb = safe_load(tmp_path / "full" / name), safe_load(tmp_path / "part" / name)
        if name.startswith("ema"):
            assert all(torch.equal(fa[k], fb[k]) for k in fa)
        else:
            sa, sb = fa["state"], fb["state"]
            assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    rows = (tmp_path / "part" / "losses.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6"]


def test_resume_skips_an_incomplete_newest_set_and_says_so(tmp_path, capsys):
    get_batch, loss_fn = _setup()
    train(_model(), loss_fn, get_batch, _cfg(tmp_path, steps=6))
    (tmp_path / "opt000006.pt").unlink()  # as if killed before the last file of the set
    assert find_resume_step(_cfg(tmp_path))[0] == 3
    res = train(_model(), loss_fn, get_batch, _cfg(tmp_path, resume=True))
    err = capsys.readouterr().err
    assert "incomplete checkpoint set at step 6 (opt000006.pt is missing)" in err
    assert "resuming from step 3" in err and res.resumed_from == 3


def test_refuses_to_overwrite_a_run_without_resume(tmp_path):
    get_batch, loss_fn = _setup()
    train(_model(), loss_fn, get_batch, _cfg(tmp_path, steps=3))
    with pytest.raises(ConfigError, match="--resume"):
        train(_model(), loss_fn, get_batch, _cfg(tmp_path, steps=3))


def test_nan_guard_skips_and_counts_then_stops(tmp_path):
    get_batch, loss_fn = _setup()
    bad_steps = {1, 2}

    def flaky(model, batch, step):
        loss, logs = loss_fn(model, batch, step)
        return (loss * float("nan") if step in bad_steps else loss), logs

    model = _model()
    res = train(
        model,
        flaky,
        get_batch,
        _cfg(tmp_path / "a", steps=4, save_interval=4, precision="fp16", initial_loss_scale=256.0),
    )
    assert res.skipped_steps == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    side = json.loads((tmp_path / "a" / "model000004.json").read_text())
    assert side["skipped_steps"] == 2
    # the fp16 loss scale halved once per skipped step
    opt = safe_load(tmp_path / "a" / "opt000004.pt")
    assert opt["rcdm"]["scaler"]["scale"] == 64.0

    def always_nan(model, batch, step):
        loss, logs = loss_fn(model, batch, step)
        return loss * float("inf"), logs

    with pytest.raises(RcdmError, match="NaN/inf for 3 steps in a row"):
        train(_model(), always_nan, get_batch, _cfg(tmp_path / "b", steps=10, max_bad_steps=3))


def test_batches_depend_only_on_step_and_cover_each_epoch():
    idx = BatchIndexer(10, 4, seed=3)
    assert torch.equal(idx.global_indices(5), BatchIndexer(10, 4, seed=3).global_indices(5))
    first_epoch = torch.cat([idx.global_indices(0), idx.global_indices(1), idx.global_indices(2)[:2]])
    assert sorted(first_epoch.tolist()) == list(range(10))


def test_checkpoint_file_hook_sees_every_file_in_order(tmp_path, monkeypatch):
    get_batch, loss_fn = _setup()
    seen = []
    monkeypatch.setattr(training, "_after_checkpoint_file_hook", lambda p: seen.append(p.name))
    train(_model(), loss_fn, get_batch, _cfg(tmp_path, steps=3, ema_rates=(0.9,)))
    assert seen == [
        "model000003.pt",
        "model000003.json",
        "ema_0.9_000003.pt",
        "ema_0.9_000003.json",
        "opt000003.pt",
    ]
