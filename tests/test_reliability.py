"""Reliability and security (issue 9): untrusted checkpoints, bad configs and representations, ids that would
escape the output folder, interrupted and failing training, determinism.

Bad images (truncated, zero-byte, 16-bit, CMYK, EXIF, bombs, symlink loops, ...) are tested in
tests/test_data_badinput.py. Every user mistake here goes through the user path (the CLI, in-process through
``rcdm_core.cli.main`` so as not to pay an interpreter start per case, plus one real subprocess) and must end
with exit code 2 and ONE stderr line ``rcdm: error: ...`` naming the file, key or option, with no traceback.

At the end the module prints ``bad inputs tried: N, handled: N`` and ``kills: K, resumes: R``.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

import rcdm_core as rc
from rcdm_core import io as rio
from rcdm_core import training
from rcdm_core.cli import main
from rcdm_core.errors import CheckpointError, ConfigError, RcdmError
from rcdm_core.io import safe_load
from rcdm_core.records import Features
from rcdm_core.training import TrainConfig, find_resume_step, train

from .conftest import run_cli, torchrun

TRIED: list[str] = []
HANDLED: list[str] = []
KILLS: list[str] = []
RESUMES: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one thread is as fast alone and many times faster on a shared, loaded CPU (no OpenMP spinning);
    the forked training runs use one thread too, so every run here has the same arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    lines = (
        f"\nbad inputs tried: {len(TRIED)}, handled: {len(HANDLED)}"
        f"\nkills: {len(KILLS)}, resumes: {len(RESUMES)} (training killed with SIGKILL, then --resume)"
    )
    # printed with capturing suspended, so the figures reach the CI log on a passing run too
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        print(lines, file=sys.stderr)
        return
    with capture.global_and_fixture_disabled():
        print(lines, file=sys.stderr)


# ---- helpers ---------------------------------------------------------------------------------------------------


def cli_error(capsys, argv: list[str], *needles: str) -> str:
    """One bad input through the CLI: exit 2 and exactly one ``rcdm: error:`` line (the last), naming ``needles``.

    Anything but an RcdmError escapes ``main`` and fails the test with its traceback, as it would for a user.
    """
    TRIED.append(" ".join(argv))
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("rcdm: error:")]
    assert code == 2, err
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    HANDLED.append(" ".join(argv))
    return errors[0]


def refused(fn, exc_type, *needles: str) -> str:
    """One bad input through the Python API: ``exc_type`` raised, its one-line message naming ``needles``."""
    TRIED.append(getattr(fn, "__name__", "api"))
    with pytest.raises(exc_type) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    HANDLED.append(getattr(fn, "__name__", "api"))
    return msg


class CodeRunner:
    """Unpickling this runs ``eval``: it creates ``marker`` and yields 0. Proof that code ran is the marker."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch() or 0",))


DEN_FLAGS = dict(
    image_size=8, num_channels=32, channel_mult="1,2", num_res_blocks=1, attention_resolutions="4", num_heads=1,
    cond_dim=16, learn_sigma=True, diffusion_steps=1000, noise_schedule="linear",
)  # fmt: skip


def _denoiser_state() -> dict[str, torch.Tensor]:
    model = rc.build_denoiser("adm", **DEN_FLAGS)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # small random weights everywhere (the zero-initialised output layer too)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.state_dict()


def _encoder_state() -> dict[str, torch.Tensor]:
    """An ``ssl-small`` file (rcdm-ssl layout): backbone widths (4, 8, 8, 16) -> 16-d backbone vectors."""
    from rcdm_encoders import factories, small

    torch.manual_seed(1)
    trunk = small.SmallResNet((4, 8, 8, 16), (1, 1, 1, 1))
    proj = factories.small_projector(16, "simclr", hidden=12, out=6)
    return {
        **{"backbone." + k: v for k, v in trunk.state_dict().items()},
        **{"projector." + k: v for k, v in proj.state_dict().items()},
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny denoiser (with sidecar), an ssl-small encoder file and a 16-d representation file."""
    from rcdm_core.plugins import set_manager

    set_manager(None)
    d = tmp_path_factory.mktemp("files")
    den = d / "ema_0.9999_000001.pt"
    torch.save(_denoiser_state(), den)
    den.with_suffix(".json").write_text(json.dumps({"denoiser": "adm", "flags": DEN_FLAGS}))
    enc = d / "ssl_small.pt"
    torch.save(_encoder_state(), enc)
    cond = d / "reps.pt"
    Features(["a", "b"], torch.randn(2, 16, generator=torch.Generator().manual_seed(2)), {}).save(cond)
    return {"den": den, "enc": enc, "cond": cond, "dir": d}


def _with_bad_value(state: dict[str, torch.Tensor], key: str, value: float) -> dict[str, torch.Tensor]:
    out = dict(state)
    out[key] = state[key].clone()
    out[key].view(-1)[1] = value
    return out


def _sample_argv(checkpoint, cond, out, *extra) -> list[str]:
    return ["sample", "--checkpoint", str(checkpoint), "--cond", str(cond), "--sampler", "ddim:2", "--n", "2",
            "--out", str(out), "--no-progress", "--device", "cpu", *extra]  # fmt: skip


def _encode_argv(weights, out, *extra) -> list[str]:
    return ["encode", "--encoder", "ssl-small", "--weights", str(weights), "--data", "builtin:digits",
            "--limit", "2", "--out", str(out), "--no-progress", "--device", "cpu", *extra]  # fmt: skip


# ---- checkpoints ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["encoder", "denoiser"])
@pytest.mark.parametrize("damage", ["truncated", "empty", "unknown-layout"])
def test_unreadable_checkpoints_are_one_line_naming_the_file(kind, damage, files, tmp_path, capsys, manager):
    good = files["enc" if kind == "encoder" else "den"]
    bad = tmp_path / f"{damage}.pt"
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        needles = [str(bad), "truncated"]
    elif damage == "empty":
        bad.write_bytes(b"")
        needles = [str(bad), "empty"]
    else:
        torch.save({"totally.unknown.weight": torch.ones(3)}, bad)
        needles = [str(bad), "layout"]
    argv = (
        _encode_argv(bad, tmp_path / "f.pt")
        if kind == "encoder"
        else _sample_argv(bad, files["cond"], tmp_path / "o")
    )
    cli_error(capsys, argv, *needles)
    assert not (tmp_path / "f.pt").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "sidecar, needles",
    [
        ("{not json", ["not valid JSON"]),
        ("[1, 2]", ["must be a JSON object", "list"]),
        ('{"denoiser": "adm", "flags": "big"}', ["'flags'", "JSON object"]),
        ('{"denoiser": 5}', ["'denoiser'", "JSON string"]),
    ],
)
def test_a_malformed_sidecar_is_one_line_naming_it(sidecar, needles, files, tmp_path, capsys, manager):
    den = tmp_path / "model000001.pt"
    den.write_bytes(files["den"].read_bytes())
    den.with_suffix(".json").write_text(sidecar)
    cli_error(
        capsys, _sample_argv(den, files["cond"], tmp_path / "o"), str(den.with_suffix(".json")), *needles
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused_naming_the_key_on_every_loader(
    value, files, tmp_path, capsys, manager
):
    import open_clip
    import timm

    # ssl-small (the rcdm / official-layout reader), through the CLI
    key = "backbone.layer2.0.conv1.weight"
    path = tmp_path / "enc.pt"
    torch.save(_with_bad_value(_encoder_state(), key, value), path)
    cli_error(capsys, _encode_argv(path, tmp_path / "f.pt"), str(path), "layer2.0.conv1.weight", "NaN or inf")
    # the denoiser, through the CLI
    state = _denoiser_state()
    dkey = "input_blocks.1.0.in_layers.2.weight"
    dpath = tmp_path / "den.pt"
    torch.save(_with_bad_value(state, dkey, value), dpath)
    dpath.with_suffix(".json").write_text(files["den"].with_suffix(".json").read_text())
    cli_error(capsys, _sample_argv(dpath, files["cond"], tmp_path / "o"), str(dpath), dkey, "NaN or inf")
    # timm files (loaded through the encoders' strict loader)
    tstate = timm.create_model("test_resnet", num_classes=0).state_dict()
    tkey = "layer1.0.conv1.weight"
    tpath = tmp_path / "timm.pt"
    torch.save(_with_bad_value(tstate, tkey, value), tpath)
    refused(lambda: rc.load_encoder("timm:test_resnet", str(tpath)), CheckpointError, str(tpath), tkey)
    # open_clip files (open_clip loads them itself; the loaded tower is checked)
    cfg_dir = tmp_path / "clip_cfg"
    cfg_dir.mkdir()
    (cfg_dir / "rcdm-rel-clip.json").write_text(json.dumps({
        "embed_dim": 8,
        "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 4, "vocab_size": 20, "width": 16, "heads": 1, "layers": 1},
    }))  # fmt: skip
    open_clip.add_model_config(cfg_dir)
    cstate = open_clip.create_model("rcdm-rel-clip").state_dict()
    ckey = "visual.conv1.weight"
    cpath = tmp_path / "clip.pt"
    torch.save(_with_bad_value(cstate, ckey, value), cpath)
    refused(
        lambda: rc.load_encoder("clip:rcdm-rel-clip", str(cpath)), CheckpointError, str(cpath), "conv1.weight"
    )
    # resuming a training run whose newest checkpoint went bad
    run = tmp_path / "run"
    get_batch, loss_fn = _linear_task()
    train(_linear_model(), loss_fn, get_batch, _cfg(run, steps=2, save_interval=2))
    ema = run / "ema_0.9_000002.pt"
    torch.save(_with_bad_value(safe_load(ema), "0.weight", value), ema)
    refused(
        lambda: train(_linear_model(), loss_fn, get_batch, _cfg(run, steps=4, save_interval=2, resume=True)),
        CheckpointError, str(ema), "'0.weight'",
    )  # fmt: skip


def test_code_running_pickle_is_refused_unless_trusted_and_the_code_does_not_run(
    files, tmp_path, capsys, manager
):
    # the denoiser, through a real `python -m rcdm_core` process
    marker = tmp_path / "CODE_RAN"
    den = tmp_path / "evil_den.pt"
    torch.save({"state_dict": safe_load(files["den"]), "args": CodeRunner(marker)}, den)
    den.with_suffix(".json").write_text(files["den"].with_suffix(".json").read_text())
    TRIED.append("rcdm sample --checkpoint <code-running pickle>")
    proc = run_cli(*_sample_argv(den, files["cond"], tmp_path / "o"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(den) in lines[0] and "eval" in lines[0]
    assert "--trust-checkpoint" in lines[0] and "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "o").exists()
    HANDLED.append("rcdm sample --checkpoint <code-running pickle>")
    # the encoder, through the CLI: refused, then loaded with --trust-checkpoint (and then the code does run)
    enc = tmp_path / "evil_enc.pt"
    torch.save({"state_dict": _encoder_state(), "epoch": CodeRunner(marker)}, enc)
    cli_error(capsys, _encode_argv(enc, tmp_path / "f.pt"), str(enc), "--trust-checkpoint")
    assert not marker.exists()
    assert main(_encode_argv(enc, tmp_path / "f.pt", "--trust-checkpoint")) == 0
    assert marker.exists() and safe_load(tmp_path / "f.pt")["features"].shape == (2, 16)
    marker.unlink()
    model = rc.load_denoiser(den, trust_checkpoint=True)
    assert marker.exists() and model.cond_dim == 16


def test_random_weights_are_never_silent(tmp_path, capsys, manager):
    """No --weights: the encoder is random, and the user is told on stderr, on stdout and in the file's meta."""
    out = tmp_path / "f.pt"
    assert main(["encode", "--encoder", "ssl-small", "--data", "builtin:digits", "--limit", "2", "--out", str(out),
                 "--no-progress", "--device", "cpu"]) == 0  # fmt: skip
    std = capsys.readouterr()
    assert "RANDOM weights" in std.err and "RANDOM encoder weights" in std.out
    assert safe_load(out)["meta"]["random_weights"] is True


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files_load_and_are_cast_to_float32(dtype, files, tmp_path, manager):
    import timm

    def half(state):
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}

    def same(loaded, file_state, prefix=""):
        return all(
            v.dtype == torch.float32 and torch.equal(v, file_state[prefix + k].float())
            for k, v in loaded.items()
            if v.is_floating_point()
        )

    den_state = half(safe_load(files["den"]))
    den = tmp_path / "den.pt"
    torch.save(den_state, den)
    den.with_suffix(".json").write_text(files["den"].with_suffix(".json").read_text())
    assert same(rc.load_denoiser(den).state_dict(), den_state)

    enc_state = half(_encoder_state())
    enc = tmp_path / "enc.pt"
    torch.save(enc_state, enc)
    rep = rc.load_encoder("ssl-small", str(enc))
    assert same(rep.encoder.module.backbone.state_dict(), enc_state, "backbone.")
    assert rep.encode(torch.rand(2, 3, 32, 32)).dtype == torch.float32

    timm_state = half(timm.create_model("test_resnet", num_classes=0).state_dict())
    tpath = tmp_path / "timm.pt"
    torch.save(timm_state, tpath)
    assert same(
        rc.load_encoder("timm:test_resnet", str(tpath)).encoder.module.backbone.state_dict(), timm_state
    )


# ---- configs, options and representations -----------------------------------------------------------------------


RUN_CASES = {
    "unknown-key": ("n_sample = 2\n", ["'n_sample'"]),
    "wrong-type": ('n_images = "many"\n', ["n_images", "int"]),
    "n-samples-0": ("n_samples = 0\n", ["n_samples", "positive"]),
    "repeats-negative": ("repeats = -1\n", ["repeats", "positive"]),
    "unknown-arm-key": ('[[arm]]\nencoder = "ssl-small"\nlayr = "backbone"\n', ["'layr'"]),
    "arm-name-escapes": (
        '[[arm]]\nname = "../../escape"\nencoder = "ssl-small"\n',
        ["../../escape", "file names"],
    ),
    "epsilon-above-1": (
        'probes = ["adversarial"]\n[probe.adversarial]\nepsilon = 1.5\n',
        ["adversarial", "epsilon", "[0, 1]"],
    ),
    "unknown-probe-option": ('probes = ["samples"]\n[probe.samples]\nfigure_imgs = 2\n', ["'figure_imgs'"]),
    "sampler-0-steps": ('sampler = "ddim:0"\n', ["ddim:0", "at least 1"]),
}


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_run_config_mistakes_are_one_line_naming_the_key(case, files, tmp_path, capsys, manager):
    text, needles = RUN_CASES[case]
    arm = f'\n[[arm]]\nname = "a"\nencoder = "ssl-small"\ncheckpoint = "{files["den"]}"\n'
    body = text if "[[arm]]" in text else _top_first(text, arm)
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'out = "{tmp_path / "run"}"\n' + body)
    cli_error(capsys, ["run", "--config", str(cfg), "--no-progress"], *needles)
    assert not (tmp_path / "run" / "metrics.json").exists()


def _top_first(text: str, arm: str) -> str:
    """Top-level keys must come before any table in TOML: split ``text`` around its first table."""
    top, sep, tables = text.partition("\n[")
    return top + "\n" + arm + (("[" + tables) if sep else "")


@pytest.mark.parametrize(
    "option, needles",
    [
        (["--sampler", "ddim:0"], ["ddim:0", "at least 1"]),
        (["--sampler", "ddpm:-3"], ["ddpm:-3", "at least 1"]),
        (["--sampler", "dpm-solver++:0"], ["dpm-solver++:0", "at least 1"]),
        (["--n-samples", "0"], ["--n", "at least 1"]),
        (["--batch-size", "-2"], ["--batch-size", "at least 1"]),
    ],
)
def test_sample_options_out_of_range(option, needles, files, tmp_path, capsys, manager):
    cli_error(capsys, [*_sample_argv(files["den"], files["cond"], tmp_path / "o"), *option], *needles)


@pytest.mark.parametrize(
    "option, needles",
    [
        (["--steps", "-5"], ["--steps", "positive"]),
        (["--steps", "0"], ["--steps", "positive"]),
        (["--ema-rate", "1.5"], ["--ema-rate", "[0, 1)"]),
        (["--lr", "-1"], ["--lr", "positive"]),
    ],
)
def test_train_options_out_of_range(option, needles, files, tmp_path, capsys, manager):
    argv = ["train", "--encoder", "ssl-small", "--weights", str(files["enc"]), "--data", "builtin:digits",
            "--n-images", "2", "--out", str(tmp_path / "t"), "--image_size", "8", "--num_channels", "32",
            "--channel_mult", "1,2", "--attention_resolutions", "4", "--no-progress", "--device", "cpu", *option]  # fmt: skip
    cli_error(capsys, argv, *needles)
    assert not list(tmp_path.rglob("model*.pt"))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_representations_with_nan_or_inf_are_refused_before_sampling(value, files, tmp_path, capsys, manager):
    feats = torch.randn(3, 16)
    feats[2, 5] = value
    cond = tmp_path / "bad_reps.pt"
    Features(["a", "b", "c"], feats, {}).save(cond)
    cli_error(capsys, _sample_argv(files["den"], cond, tmp_path / "o"), str(cond), "rows [2]", "NaN or inf")
    assert not (tmp_path / "o").exists()
    # the API: a sampler refuses it too (probes sample through it)
    den = rc.load_denoiser(files["den"])
    refused(lambda: rc.get_sampler("ddim:2").sample(den, feats), ConfigError, "NaN or inf")


def test_ids_that_would_escape_the_output_folder_stay_inside(files, tmp_path, capsys, manager):
    """``rcdm sample`` writes one grid per id through rcdm_core.paths.safe_join; `rcdm encode` writes one file
    (ids are data inside it) and probes name files after arms (checked in the config test) or sanitised ids."""
    ids = ["../../escape", "/abs/olute", "a/../../b", "..", "c\\..\\..\\d", "ok"]
    cond = tmp_path / "work" / "reps.pt"
    cond.parent.mkdir()
    Features(ids, torch.randn(len(ids), 16), {}).save(cond)
    out = tmp_path / "work" / "out"
    TRIED.append("ids escaping the output folder")
    before = {p for p in tmp_path.rglob("*")}
    assert main(_sample_argv(files["den"], cond, out)) == 0
    new = {p for p in tmp_path.rglob("*")} - before
    outside = [p for p in new if not p.resolve().is_relative_to(out.resolve())]
    assert outside == []
    grids = sorted(p.relative_to(out / "grids").as_posix() for p in (out / "grids").rglob("*.png"))
    assert len(grids) == len(ids) and ".." not in "/".join(grids).split("/")
    assert safe_load(out / "samples.pt")["ids"] == ids  # the ids themselves are kept, as data
    HANDLED.append("ids escaping the output folder")


# ---- interrupted and failing work ------------------------------------------------------------------------------


TINY = ["--image_size", "8", "--num_channels", "32", "--channel_mult", "1,2", "--num_res_blocks", "1",
        "--attention_resolutions", "4", "--num_heads", "1"]  # fmt: skip


def _train_argv(files, out, *extra) -> list[str]:
    return ["train", "--encoder", "ssl-small", "--weights", str(files["enc"]), "--data", "builtin:photos?size=16",
            "--n-images", "6", "--out", str(out), *TINY, "--batch_size", "4", "--save_interval", "2", "--steps", "6",
            "--log-interval", "1", "--ema-rate", "0.9", "--cache-cond", "--no-progress", "--device", "cpu", *extra]  # fmt: skip


def _train_in_child(argv: list[str], kill: tuple[str, str] | None) -> int:
    """Fork, run ``rcdm train`` in the child, and SIGKILL it at ``kill``. The child dies exactly as a
    ``kill -9`` of ``python -m rcdm_core train`` would; forking only saves the interpreter, torch and plugin
    start-up (~10 s a process on a shared CPU) per kill. ``kill`` = (where, what): ("step", "3") before step 4 starts, ("replace", NAME) with NAME's bytes written to
    its temporary file but not yet renamed, ("file", NAME) right after NAME is in place.
    Returns the child's exit code, or -signal."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            torch.set_num_threads(1)  # the parent's thread pool does not survive fork; 1 thread in every run
            die = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
            where, what = kill or ("", "")
            if where == "step":
                step_fn = training._Trainer.train_step

                def train_step(self):
                    if self.step == int(what):
                        die()
                    return step_fn(self)

                training._Trainer.train_step = train_step
            elif where == "replace":
                rio._before_replace_hook = lambda tmp: die() if tmp.name.startswith(f".{what}.") else None
            elif where == "file":
                training._after_checkpoint_file_hook = lambda path: die() if path.name == what else None
            code = main(argv)
        except BaseException:  # noqa: BLE001 - report as a failure code, never continue pytest in the child
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    deadline = time.monotonic() + 240
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if time.monotonic() > deadline:  # never leave a stuck child behind
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"rcdm train {kill} did not finish in 240 s")
        time.sleep(0.05)


def _visible_files_are_complete(run: Path) -> None:
    """Every file in place (not a hidden temporary) is whole: .pt files load, sidecars parse, the CSV reads."""
    for p in run.iterdir():
        if p.name.startswith("."):
            continue
        if p.suffix == ".pt":
            assert isinstance(safe_load(p), dict), p
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".csv":
            rows = list(csv.DictReader(p.open()))
            assert rows and all(r["loss"] for r in rows), p


def test_training_killed_anywhere_resumes_to_the_uninterrupted_weights(files, tmp_path, manager):
    """SIGKILL between steps, mid-write of a checkpoint file, between the files of a set, mid-write of the last
    file of a set and mid-write of losses.csv, in one run folder: each time ``--resume`` finds the newest
    complete set, no file is ever half-written in place, and the final weights equal an uninterrupted run's."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert _train_in_child(_train_argv(files, ref), None) == 0
    cfg = TrainConfig(out_dir=run, steps=6, global_batch=4, ema_rates=(0.9,))
    plan = [  # (kill point, newest complete set afterwards)
        (("step", "3"), 2),
        (("replace", "ema_0.9_000004.pt"), 2),
        (("file", "model000006.json"), 4),
        (("replace", "opt000006.pt"), 4),
        (("replace", "losses.csv"), 6),
    ]
    for i, (kill, newest) in enumerate(plan):
        extra = ["--resume"] if i else []
        assert _train_in_child(_train_argv(files, run, *extra), kill) == -signal.SIGKILL, kill
        KILLS.append(f"{kill[0]}:{kill[1]}")
        RESUMES.extend(["resume"] if i else [])
        assert find_resume_step(cfg)[0] == newest, kill
        _visible_files_are_complete(run)
    assert any(p.name.endswith(".tmp") for p in run.iterdir())  # the last kill left its temporary behind
    assert _train_in_child(_train_argv(files, run, "--resume"), None) == 0
    RESUMES.append("resume")
    assert not any(p.name.endswith(".tmp") for p in run.iterdir())  # --resume cleared it
    for name in ("model000006.pt", "ema_0.9_000006.pt"):
        a, b = safe_load(ref / name), safe_load(run / name)
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), name
    a, b = safe_load(ref / "opt000006.pt"), safe_load(run / "opt000006.pt")
    assert all(torch.equal(a["state"][i]["exp_avg_sq"], b["state"][i]["exp_avg_sq"]) for i in a["state"])


def test_a_failing_checkpoint_write_keeps_the_previous_set_and_says_so(
    files, tmp_path, capsys, monkeypatch, manager
):
    run = tmp_path / "run"

    def disk_full(tmp: Path) -> None:
        if tmp.name.startswith(".model000004.pt."):
            tmp.write_bytes(b"partial")  # some bytes got out before the disk filled
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rio, "_before_replace_hook", disk_full)
    line = cli_error(
        capsys, _train_argv(files, run, "--steps", "4"),
        "model000004.pt", "No space left on device", "step 2", "intact", "--resume",
    )  # fmt: skip
    assert str(run) in line
    assert not (run / "model000004.pt").exists() and not any(p.name.endswith(".tmp") for p in run.iterdir())
    assert find_resume_step(TrainConfig(out_dir=run, steps=4, global_batch=4, ema_rates=(0.9,)))[0] == 2
    _visible_files_are_complete(run)
    before = safe_load(run / "model000002.pt")
    monkeypatch.setattr(rio, "_before_replace_hook", None)
    assert main(_train_argv(files, run, "--steps", "4", "--resume")) == 0
    assert (run / "model000004.pt").exists()
    after = safe_load(run / "model000002.pt")
    assert all(torch.equal(before[k], after[k]) for k in before)

    # rewriting an existing output (rcdm sample into the same folder) keeps the old file whole
    out = tmp_path / "samples"
    assert main(_sample_argv(files["den"], files["cond"], out)) == 0
    old = (out / "samples.pt").read_bytes()

    def disk_full_at_samples(tmp: Path) -> None:
        if tmp.name.startswith(".samples.pt."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rio, "_before_replace_hook", disk_full_at_samples)
    cli_error(capsys, _sample_argv(files["den"], files["cond"], out), "samples.pt", "previous file is intact")
    assert (out / "samples.pt").read_bytes() == old


def _linear_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))


def _linear_task():
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    y = x.sum(1, keepdim=True)

    def get_batch(step):
        return x, y

    def loss_fn(model, batch, step):
        return ((model(batch[0]) - batch[1]) ** 2).mean(), {}

    return get_batch, loss_fn


def _cfg(out, **kw) -> TrainConfig:
    return TrainConfig(**{"out_dir": out, "steps": 6, "global_batch": 8, "ema_rates": (0.9,), "save_interval": 6,
                          "progress": False, "lr": 1e-2, **kw})  # fmt: skip


def test_fp16_overflow_skips_and_counts_steps_then_stops_clearly(tmp_path):
    get_batch, base = _linear_task()
    overflow_at = {2, 3}

    def overflowing(model, batch, step):
        loss, logs = base(model, batch, step)
        if step in overflow_at:
            loss = (loss.half() * 1e5).sum()  # beyond float16's 65504: inf, whatever the loss scale
        return loss, logs

    TRIED.append("fp16 overflow")
    model = _linear_model()
    res = train(
        model, overflowing, get_batch, _cfg(tmp_path / "a", precision="fp16", initial_loss_scale=1024.0)
    )
    assert res.skipped_steps == 2 and res.step == 6
    assert [r["skipped"] for r in res.rows] == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert json.loads((tmp_path / "a" / "model000006.json").read_text())["skipped_steps"] == 2
    assert (
        safe_load(tmp_path / "a" / "opt000006.pt")["rcdm"]["scaler"]["scale"] == 256.0
    )  # halved per overflow

    overflow_at = set(range(100))  # every step: a clear stop after max_bad_steps in a row
    msg = refused(
        lambda: train(_linear_model(), overflowing, get_batch,
                      _cfg(tmp_path / "b", steps=50, precision="fp16", max_bad_steps=5)),
        RcdmError, "step 5", "5 steps in a row", "loss scale", "--precision bf16",
    )  # fmt: skip
    assert "NaN/inf" in msg
    HANDLED.append("fp16 overflow")


# ---- determinism ------------------------------------------------------------------------------------------------


class _Capture:
    """A plugin object that records every batch of samples a run draws (the ``rcdm_after_sample`` hook)."""

    def __init__(self):
        self.samples: list[torch.Tensor] = []

    @rc.hookimpl
    def rcdm_after_sample(self, arm, cond, samples):
        self.samples.append(samples.detach().clone())


def _run_twice_and_capture(files, tmp_path, manager, name, *extra):
    cap = _Capture()
    manager.register_module(cap, name=f"capture-{name}")
    argv = ["run", "--encoder", "ssl-small", "--weights", str(files["enc"]), "--checkpoint", str(files["den"]),
            "--data", "builtin:photos?size=16", "--n-images", "3", "--n-samples", "2", "--sampler", "ddim:3",
            "--probe", "samples", "--out", str(tmp_path / name), "--no-progress", "--device", "cpu", *extra]  # fmt: skip
    assert main(argv) == 0
    manager.pm.unregister(name=f"capture-{name}")
    metrics = json.loads((tmp_path / name / "metrics.json").read_text())
    for probe in metrics["probes"].values():
        probe.pop("seconds")  # wall time, the one field that may differ
    return torch.cat(cap.samples), metrics


def test_same_seed_same_layout_is_bitwise_and_other_batch_sizes_agree(files, tmp_path, manager):
    s1, m1 = _run_twice_and_capture(files, tmp_path, manager, "one", "--batch-size", "4")
    s2, m2 = _run_twice_and_capture(files, tmp_path, manager, "two", "--batch-size", "4")
    assert torch.equal(s1, s2) and m1 == m2
    s3, m3 = _run_twice_and_capture(files, tmp_path, manager, "three", "--batch-size", "1")
    torch.testing.assert_close(s3, s1, rtol=0, atol=1e-5)
    a = m1["probes"]["samples"]["metrics"]
    b = m3["probes"]["samples"]["metrics"]
    assert a.keys() == b.keys()
    for arm in a:
        assert abs(a[arm]["mean_pixel_std"] - b[arm]["mean_pixel_std"]) < 1e-5
    # not vacuous: the two samples of one image differ (noise keyed per sample id), and neither is constant
    assert (s1[0] - s1[1]).abs().max() > 0.05 and s1[0].std() > 0.01


def test_two_ranks_write_the_samples_one_rank_writes(files, tmp_path, manager):
    one, two = tmp_path / "one", tmp_path / "two"
    argv = _sample_argv(files["den"], files["cond"], one, "--batch-size", "1")
    assert main(argv) == 0
    argv = [a if a != "--n" else "--n-samples" for a in _sample_argv(files["den"], files["cond"], two)]
    proc = torchrun(*argv, "--batch-size", "3", nproc=2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = safe_load(one / "samples.pt"), safe_load(two / "samples.pt")
    assert a["ids"] == b["ids"] and a["samples"].shape == b["samples"].shape == (2, 2, 3, 8, 8)
    torch.testing.assert_close(b["samples"], a["samples"], rtol=0, atol=1e-5)
    assert a["samples"].std() > 0.01
