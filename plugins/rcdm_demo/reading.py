"""The demo's headline reading: did grayscale / colour jitter through the backbone carry into the samples while
the projector's did not (findings 1 and 2)? Generated from the invariance probe's numbers, whatever they say."""

from __future__ import annotations

from typing import Any

# The invariance probe's own thresholds for its verdicts (carried >= 0.5, not carried <= 0.2).
CARRIED, IGNORED = 0.5, 0.2
# Differences in "carried" smaller than this count as no difference between the arms.
SAME = 0.05
LABELS = {
    "grayscale": "grayscale",
    "color_jitter": "colour jitter",
    "flip": "flip",
    "crop": "crop",
    "blur": "blur",
}


def _carried(metrics: dict[str, Any], arm: str, aug: str) -> float | None:
    value = metrics.get(arm, {}).get(aug, {}).get("carried")
    if isinstance(value, dict):  # repeats: {mean, std, values}
        value = value.get("mean")
    return float(value) if isinstance(value, (int, float)) else None


def _word(v: float) -> str:
    return "carried" if v >= CARRIED else "not carried" if v <= IGNORED else "partly carried"


def findings_reading(
    doc: dict[str, Any], backbone: str = "backbone", projector: str = "projector"
) -> list[str]:
    """One sentence per colour augmentation comparing the two arms, then one verdict on findings 1 and 2.

    ``doc`` is the run's metrics document; returns [] when the invariance probe or either arm is missing.
    """
    inv = doc.get("probes", {}).get("invariance", {}).get("metrics", {})
    if backbone not in inv or projector not in inv:
        return []
    sentences, diffs = [], []
    for aug in ("grayscale", "color_jitter", "flip", "crop", "blur"):
        b, p = _carried(inv, backbone, aug), _carried(inv, projector, aug)
        if b is None or p is None:
            continue
        if aug in ("grayscale", "color_jitter"):
            diffs.append(b - p)
        sentences.append(
            f"{LABELS[aug]}: {_word(b)} through the {backbone} ({b:.2f}), {_word(p)} through the {projector} "
            f"({p:.2f})"
        )
    if not sentences:
        return []
    return [
        "Reading of findings 1 and 2 (how much of each augmentation the samples carry, 1 = all, 0 = none): "
        + "; ".join(sentences)
        + ". "
        + _verdict(diffs, backbone, projector)
    ]


def _verdict(diffs: list[float], backbone: str, projector: str) -> str:
    """From the backbone-minus-projector differences of the colour augmentations' ``carried``."""
    if not diffs:
        return "Neither grayscale nor colour jitter was probed, so findings 1 and 2 are not read here."
    if all(abs(d) <= SAME for d in diffs):
        return (
            f"The {backbone} and the {projector} carried about the same amount of the colour augmentations "
            f"(within {SAME}), so this run does not separate them."
        )
    if all(d > SAME for d in diffs):
        return (
            f"As in the paper (findings 1 and 2), the {backbone} kept more of the colour augmentations than the "
            f"{projector}, which is closer to invariant to them."
        )
    if all(d < -SAME for d in diffs):
        return (
            f"Unlike the paper's findings 1 and 2, the {projector} kept more of the colour augmentations than "
            f"the {backbone} in this run."
        )
    return "Grayscale and colour jitter disagree on which arm keeps more, so findings 1 and 2 are mixed here."
