"""The recipe of the shipped demo weights: the exact commands that produced them, in order.

Each command is a template whose ``{out}`` is the retrain folder (``runs/demo-retrain`` when the shipped files
were made). The model cards (the JSON sidecars in ``weights/``) record the command each file came from; the
test suite checks that they equal this recipe, so the two cannot drift apart.

Why these sizes (2 CPU cores; `rcdm demo --retrain` takes about 4 + 35 minutes, the RCDMs side by side):
- encoder: ``ssl-small`` at width 16 (stages 16-32-64-128, a 128-d backbone and a 512-128 projector), SimCLR
  on the training patches, 300 steps of 128 images (two views each): about 4 minutes on one core.
- RCDMs: an ADM UNet of 1.4 million parameters (32 channels, channel_mult 1,2,2, one res block per level,
  attention at 8 px, learned sigma, scale-shift norm, cosine noise schedule), conditions cached, 6000 steps
  of 16 images with AdamW 1e-3, gradient clipping at 1, an EMA of 0.995, bf16 autocast (1.3x faster than
  fp32 on a CPU with avx512_bf16): about 35 minutes each on one core at ~40-45 images/s. Far less than a
  diffusion model wants (the released RCDMs saw ~1000x more images), so three choices make it count:
  * ``--norm_groups 8``: with the official 32 GroupNorm groups a 32-channel model has one channel per group,
    and the output head's GroupNorm then erases every per-image constant, the global colour included. The
    previous demo weights (32 groups, 4000 steps) could not make the samples' colour follow the condition
    (faithfulness mean rank 0.81-0.88 of the shuffled baseline's); with 8 groups it follows within 500 steps,
    and the shipped 6000-step RCDMs rank their source at 0.26-0.27 of the shuffled baseline's mean rank.
  * ``--p2-gamma 0.5`` (P2 weighting, Choi et al. 2022): the mse of the nearly clean steps counts less, so the
    noisy steps, where colour and layout are decided from the condition, are trained harder; at 1000 steps it
    gave mean rank 59 against 70 without it (backbone arm, ddpm:20 leading, 32 held-out patches).
  * the cosine schedule: with the linear one the last third of the timesteps is almost pure noise, and a first
    run at this budget learned to use the condition only below t = 500 (faithfulness at chance).
``--retrain`` runs them with ``OMP_NUM_THREADS=1`` (unless set): small tensor operations with two threads on
an oversubscribed CPU were measured 10-20x slower than with one.
"""

from __future__ import annotations

from . import settings as S

OUT = "{out}"
ENCODER_STEPS = 300
RCDM_STEPS = 6000
RCDM_SAVE_INTERVAL = 1000
RCDM_EMA = "0.995"

ENCODER_OUT = f"{OUT}/encoder"
ENCODER_FILE = f"{ENCODER_OUT}/{S.ENCODER_FILE}"

# Model flags of both RCDMs (official names).
RCDM_FLAGS = [
    "--image_size", "32",
    "--num_channels", "32",
    "--channel_mult", "1,2,2",
    "--num_res_blocks", "1",
    "--attention_resolutions", "8",
    "--num_head_channels", "32",
    "--learn_sigma", "True",
    "--use_scale_shift_norm", "True",
    "--noise_schedule", "cosine",
    "--norm_groups", "8",
]  # fmt: skip


def encoder_command() -> list[str]:
    return [
        "rcdm", "train-encoder", "--method", "simclr", "--data", S.TRAIN_DATA, "--out", ENCODER_OUT,
        "--steps", str(ENCODER_STEPS), "--batch-size", "128", "--width", "16", "--lr", "1e-3",
        "--save-interval", "100", "--seed", "0",
    ]  # fmt: skip


def rcdm_command(arm: str) -> list[str]:
    return [
        "rcdm", "train", "--encoder", "ssl-small", "--weights", ENCODER_FILE, "--layer", arm,
        "--data", S.TRAIN_DATA, "--out", f"{OUT}/rcdm_{arm}", *RCDM_FLAGS,
        "--steps", str(RCDM_STEPS), "--batch_size", "16", "--lr", "1e-3", "--ema_rate", RCDM_EMA,
        "--grad_clip", "1.0", "--precision", "bf16", "--p2-gamma", "0.5",
        "--save_interval", str(RCDM_SAVE_INTERVAL), "--cache-cond",
        "--seed", "0",
    ]  # fmt: skip


def recipe() -> dict[str, list[str]]:
    """{shipped file name: command template (argv, ``{out}`` = the retrain folder)}, in the order to run."""
    return {
        S.ENCODER_FILE: encoder_command(),
        S.ARM_FILES["backbone"]: rcdm_command("backbone"),
        S.ARM_FILES["projector"]: rcdm_command("projector"),
    }


def option(argv: list[str], *names: str) -> str | None:
    """The value after the first of ``names`` in ``argv`` (``--steps 600``), or None."""
    for i, tok in enumerate(argv[:-1]):
        if tok in names:
            return argv[i + 1]
    return None


def with_option(argv: list[str], value: str, *names: str) -> list[str]:
    """``argv`` with the value of option ``names`` replaced (it must be present)."""
    out = list(argv)
    for i, tok in enumerate(out[:-1]):
        if tok in names:
            out[i + 1] = value
            return out
    raise ValueError(f"{names[0]} not in {argv}")


def produced_file(argv: list[str]) -> str:
    """Where a recipe command writes the file that ships: the exported encoder, or the last EMA checkpoint."""
    out = option(argv, "--out")
    if argv[1] == "train-encoder":
        return f"{out}/ssl_small_{option(argv, '--method').replace('-', '_')}.pt"
    steps = int(option(argv, "--steps"))
    return f"{out}/ema_{option(argv, '--ema_rate', '--ema-rate')}_{steps:06d}.pt"
