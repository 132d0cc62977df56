"""Run configuration: TOML and/or flags, arms, option validation, and writing the resolved config."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import attrs

from .errors import ConfigError
from .paths import safe_id
from .records import Arm, Option

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ARM_KEYS = {f.name for f in attrs.fields(Arm)}


def _positive_int(name: str):
    def check(v: Any) -> str | None:
        return None if isinstance(v, int) and v > 0 else f"{name} must be a positive integer, got {v!r}"

    return check


@attrs.define
class RunConfig:
    """Everything ``rcdm-run`` needs; ``probe_options`` maps probe name -> {option: value}."""

    arms: list[Arm] = attrs.field(factory=list)
    probes: list[str] = attrs.field(factory=lambda: ["samples"])
    data: str = "builtin:photos?split=heldout&size=32"
    reference: str | None = None
    sampler: str = "ddim:25"
    seed: int = 0
    repeats: int = 1
    n_images: int = 4
    n_samples: int = 4
    batch_size: int = 16
    device: str = "auto"
    precision: str = "fp32"
    out: str = "runs/run"
    plugins: list[str] = attrs.field(factory=list)
    trust_checkpoint: bool = False
    probe_options: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    progress: bool = True

    def as_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["arm"] = d.pop("arms")
        d["probe"] = d.pop("probe_options")
        return d


TOP_KEYS = {f.name for f in attrs.fields(RunConfig)} - {"arms", "probe_options"} | {"arm", "probe"}

_TYPES: dict[str, type] = {
    "probes": list,
    "data": str,
    "reference": str,
    "sampler": str,
    "seed": int,
    "repeats": int,
    "n_images": int,
    "n_samples": int,
    "batch_size": int,
    "device": str,
    "precision": str,
    "out": str,
    "plugins": list,
    "trust_checkpoint": bool,
    "progress": bool,
}


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--config {path}: no such file")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def build_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a raw dict (from TOML, flags merged over it) into a RunConfig; unknown keys are errors."""
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(TOP_KEYS))}")
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("arm", "probe"):
            continue
        want = _TYPES[key]
        if value is None and key == "reference":
            continue
        if want is int and isinstance(value, bool) or not isinstance(value, want):
            if want is int and isinstance(value, str) and value.lstrip("-").isdigit():
                value = int(value)
            else:
                raise ConfigError(
                    f"{source}: {key} must be {want.__name__}, got {type(value).__name__} {value!r}"
                )
        kwargs[key] = value
    for key in ("repeats", "n_images", "n_samples", "batch_size"):
        if key in kwargs and kwargs[key] <= 0:
            raise ConfigError(f"{source}: {key} must be a positive integer, got {kwargs[key]}")
    if kwargs.get("precision", "fp32") not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"{source}: precision must be fp32, bf16 or fp16, got {kwargs['precision']!r}")
    arms = []
    raw_arms = raw.get("arm", [])
    if isinstance(raw_arms, dict):
        raw_arms = [raw_arms]
    for i, a in enumerate(raw_arms):
        if not isinstance(a, dict):
            raise ConfigError(f"{source}: [[arm]] entry {i} must be a table")
        bad = sorted(set(a) - ARM_KEYS)
        if bad:
            raise ConfigError(
                f"{source}: [[arm]] {a.get('name', i)}: unknown key {bad[0]!r}; known: {', '.join(sorted(ARM_KEYS))}"
            )
        if "encoder" not in a:
            raise ConfigError(f"{source}: [[arm]] {a.get('name', i)} needs an encoder")
        for k, v in a.items():
            if v is not None and not isinstance(v, str):
                raise ConfigError(f"{source}: [[arm]] {a.get('name', i)}: {k} must be a string, got {v!r}")
        arm = Arm(**{"name": a.get("name") or f"arm{i}", **{k: v for k, v in a.items() if k != "name"}})
        if "/" in arm.name or safe_id(arm.name) != arm.name:  # probes write files named after arms
            raise ConfigError(
                f"{source}: [[arm]] name {arm.name!r} is used in file names; use letters, digits, '-', '_' and '.'"
            )
        if arm.input_norm not in ("own", "rcdm"):
            raise ConfigError(
                f"{source}: [[arm]] {arm.name}: input_norm must be 'own' or 'rcdm', got {arm.input_norm!r}"
            )
        arms.append(arm)
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: two arms share a name; names must be unique ({names})")
    probe_opts = raw.get("probe", {})
    if not isinstance(probe_opts, dict) or not all(isinstance(v, dict) for v in probe_opts.values()):
        raise ConfigError(f"{source}: [probe.NAME] tables must hold option = value pairs")
    return RunConfig(arms=arms, probe_options={k: dict(v) for k, v in probe_opts.items()}, **kwargs)


def resolve_options(owner: str, declared: dict[str, Option], given: dict[str, Any]) -> dict[str, Any]:
    """Defaults + given values, converted and checked; a key nobody declared is an error naming it."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        known = ", ".join(sorted(declared)) or "none"
        raise ConfigError(f"{owner}: unknown option {unknown[0]!r}; it accepts: {known}")
    out = {}
    for key, opt in declared.items():
        value = given.get(key, opt.default)
        if key in given and opt.type is not None and value is not None:
            try:
                value = opt.type(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{owner}: option {key}={given[key]!r} is not valid ({exc})") from None
        if opt.choices is not None and value not in opt.choices:
            raise ConfigError(
                f"{owner}: option {key}={value!r}; choose one of {', '.join(map(str, opt.choices))}"
            )
        if opt.check is not None and key in given:
            msg = opt.check(value)
            if msg:
                raise ConfigError(f"{owner}: option {key}: {msg}")
        out[key] = value
    return out


def parse_opt_assignments(items: list[str]) -> dict[str, dict[str, Any]]:
    """``--opt invariance.strength=0.5`` -> {"invariance": {"strength": 0.5}} (values parsed as TOML/JSON)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        probe, dot, opt = key.partition(".")
        if not eq or not dot or not probe or not opt:
            raise ConfigError(f"--opt {item!r}: write PROBE.KEY=VALUE, e.g. --opt invariance.strength=0.5")
        out.setdefault(probe, {})[opt] = parse_value(value)
    return out


def parse_bool(value: Any, what: str = "value") -> bool:
    """True/False from a bool or the usual spellings (true/false, 1/0, yes/no, on/off, t/f, y/n)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on", "t", "y"):
        return True
    if text in ("false", "0", "no", "off", "f", "n"):
        return False
    raise ConfigError(f"{what} must be true or false, got {value!r}")


def parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text


def to_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for the resolved config (tables and arrays of tables; no dates)."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and not _is_table_list(v)}
    for k, v in scalars.items():
        if v is not None:
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in data.items():
        if isinstance(v, dict):
            _table(lines, [k], v)
    for k, v in data.items():
        if _is_table_list(v):
            for item in v:
                lines.append("")
                lines.append(f"[[{_key(k)}]]")
                for ik, iv in item.items():
                    if iv is not None:
                        lines.append(f"{_key(ik)} = {_value(iv)}")
    return "\n".join(lines) + "\n"


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(x, dict) for x in v)


def _table(lines: list[str], path: list[str], d: dict[str, Any]) -> None:
    scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
    if scalars or not d:
        lines.append("")
        lines.append("[" + ".".join(_key(p) for p in path) + "]")
        for k, v in scalars.items():
            if v is not None:
                lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in d.items():
        if isinstance(v, dict):
            _table(lines, [*path, k], v)


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items() if x is not None) + "}"
    return json.dumps(str(v))
