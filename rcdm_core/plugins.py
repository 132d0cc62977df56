"""The plugin manager: entry-point discovery, failure isolation and the name registry."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import sys
import traceback
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import ConfigError
from .records import (
    CommandRecord,
    DataSourceRecord,
    DenoiserRecord,
    EncoderRecord,
    LayerSelectorRecord,
    ProbeRecord,
    SamplerRecord,
)

GROUP = "rcdm"


class _CoreImpls:
    """The kernel's own hook implementations (the innermost call that wrappers wrap)."""

    @pluggy.HookimplMarker("rcdm")(trylast=True)
    def rcdm_probe_call(self, probe_name, probe, ctx):
        return probe.run(ctx)


FIRST_PARTY_DIST = "rcdm"

# hook name -> (kind shown to users, record type)
KINDS: dict[str, tuple[str, type]] = {
    "rcdm_encoders": ("encoder", EncoderRecord),
    "rcdm_layer_selectors": ("layer", LayerSelectorRecord),
    "rcdm_denoisers": ("denoiser", DenoiserRecord),
    "rcdm_samplers": ("sampler", SamplerRecord),
    "rcdm_probes": ("probe", ProbeRecord),
    "rcdm_data_sources": ("data", DataSourceRecord),
    "rcdm_commands": ("command", CommandRecord),
}


@attrs.define
class PluginInfo:
    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    status: str = "loaded"  # loaded | failed | disabled
    reason: str = ""
    registered: dict[str, list[str]] = attrs.field(factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": sorted(k for k, v in self.registered.items() if v),
            "registered": {k: v for k, v in self.registered.items() if v},
            "version": self.version,
            "distribution": self.distribution,
            "module": self.module,
            "status": self.status,
            "reason": self.reason,
        }


class Manager:
    """Wraps a :class:`pluggy.PluginManager` and keeps one registry per kind.

    Build a fresh one in tests: ``m = Manager(); m.register_module(mod); m.collect()``.
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("rcdm")
        self.pm.add_hookspecs(hookspecs)
        self.pm.register(_CoreImpls(), name="rcdm_core")
        self.plugins: dict[str, PluginInfo] = {}
        self.registry: dict[str, dict[str, Any]] = {kind: {} for kind, _ in KINDS.values()}
        self._owner: dict[tuple[str, str], PluginInfo] = {}
        self._collected = False

    # ---- loading -------------------------------------------------------------------------------------------
    def register_module(
        self,
        module: Any,
        name: str | None = None,
        distribution: str | None = None,
        version: str | None = None,
    ) -> PluginInfo:
        """Register an imported module (or object) holding ``@hookimpl`` functions."""
        pname = name or getattr(module, "__name__", repr(module))
        info = PluginInfo(
            name=pname, module=getattr(module, "__name__", pname), distribution=distribution, version=version
        )
        try:
            self.pm.register(module, name=pname)
        except Exception as exc:  # a plugin with a malformed hookimpl must not take the rest down
            info.status, info.reason = "failed", f"{type(exc).__name__}: {exc}"
        self.plugins[pname] = info
        self._collected = False
        return info

    def load_module_path(self, dotted: str) -> PluginInfo:
        """``--plugin my.module``: import research code and register it (errors are user errors)."""
        try:
            module = importlib.import_module(dotted)
        except Exception as exc:
            raise ConfigError(
                f"--plugin {dotted}: could not import it ({type(exc).__name__}: {exc})"
            ) from None
        info = self.register_module(module, name=dotted, distribution="(--plugin)")
        if info.status == "failed":
            raise ConfigError(f"--plugin {dotted}: {info.reason}")
        return info

    def load_entry_points(self, entry_points: Iterable[md.EntryPoint] | None = None) -> None:
        """Load every ``rcdm`` entry point, honouring RCDM_DISABLE_PLUGINS and RCDM_LOAD_PLUGINS."""
        disabled = _env_set("RCDM_DISABLE_PLUGINS")
        only = _env_set("RCDM_LOAD_PLUGINS")
        eps = list(entry_points) if entry_points is not None else list(md.entry_points(group=GROUP))
        for ep in eps:
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            version = dist.version if dist is not None else None
            first_party = dist_name == FIRST_PARTY_DIST
            if ep.name in self.plugins:
                continue
            if ep.name in disabled or (only is not None and not first_party and ep.name not in only):
                why = "RCDM_DISABLE_PLUGINS" if ep.name in disabled else "not in RCDM_LOAD_PLUGINS"
                self.plugins[ep.name] = PluginInfo(ep.name, ep.value, dist_name, version, "disabled", why)
                continue
            try:
                module = ep.load()
            except Exception as exc:
                tb = traceback.extract_tb(exc.__traceback__)
                where = f" ({tb[-1].filename}:{tb[-1].lineno})" if tb else ""
                self.plugins[ep.name] = PluginInfo(
                    ep.name,
                    ep.value,
                    dist_name,
                    version,
                    "failed",
                    f"import failed: {type(exc).__name__}: {exc}{where}",
                )
                continue
            self.register_module(module, name=ep.name, distribution=dist_name, version=version)
        self._collected = False

    # ---- registry --------------------------------------------------------------------------------------------
    def collect(self) -> None:
        """Call every registration hook, plugin by plugin, so one broken plugin cannot hide the others."""
        if self._collected:
            return
        self.registry = {kind: {} for kind, _ in KINDS.values()}
        self._owner = {}
        # registration order: first-party first, then others in load order; stable for duplicate reporting
        infos = sorted(self.plugins.values(), key=lambda i: (i.distribution != FIRST_PARTY_DIST,))
        for info in infos:
            if info.status != "loaded":
                continue
            plugin = self.pm.get_plugin(info.name)
            if plugin is None:
                continue
            staged: list[tuple[str, Any]] = []
            try:
                for hook_name, (kind, rtype) in KINDS.items():
                    impl = getattr(plugin, hook_name, None)
                    if impl is None:
                        continue
                    for rec in impl() or []:
                        if not isinstance(rec, rtype):
                            raise TypeError(
                                f"{hook_name} returned a {type(rec).__name__}, expected {rtype.__name__}"
                            )
                        staged.append((kind, rec))
            except Exception as exc:
                info.status, info.reason = "failed", f"registration failed: {type(exc).__name__}: {exc}"
                self.pm.unregister(plugin)
                continue
            clash = next(((k, r) for k, r in staged if r.name in self.registry[k]), None)
            if clash is not None:
                kind, rec = clash
                other = self._owner[(kind, rec.name)]
                info.status = "failed"
                info.reason = (
                    f"{kind} name {rec.name!r} is already registered by plugin {other.name!r} "
                    f"(distribution {other.distribution or 'unknown'}); this one is from distribution "
                    f"{info.distribution or 'unknown'} and was rejected"
                )
                self.pm.unregister(plugin)
                continue
            for kind, rec in staged:
                self.registry[kind][rec.name] = rec
                self._owner[(kind, rec.name)] = info
                info.registered.setdefault(kind, []).append(rec.name)
        self._collected = True

    def names(self, kind: str) -> list[str]:
        self.collect()
        return sorted(self.registry[kind])

    def get(self, kind: str, name: str) -> tuple[Any, str | None]:
        """Look a name up; prefix records (``clip:``) match ``clip:ViT-B-32`` and return the rest as arg.

        Unknown names raise a ConfigError listing the available names of that kind.
        """
        self.collect()
        reg = self.registry[kind]
        if name in reg and not name.endswith(":"):
            return reg[name], None
        head, sep, rest = name.partition(":")
        if sep and head + ":" in reg:
            if not rest:
                raise ConfigError(f"{kind} {name!r} needs a name after the colon, e.g. {head}:NAME")
            return reg[head + ":"], rest
        avail = ", ".join(n + ("NAME" if n.endswith(":") else "") for n in sorted(reg)) or "(none registered)"
        raise ConfigError(f"unknown {kind} {name!r}; available: {avail}")

    def hook(self):
        return self.pm.hook

    def listing(self) -> list[dict[str, Any]]:
        self.collect()
        return [self.plugins[k].as_dict() for k in sorted(self.plugins)]


def _env_set(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return set() if var == "RCDM_DISABLE_PLUGINS" else None
    return {s.strip() for s in raw.split(",") if s.strip()}


_MANAGER: Manager | None = None


def get_manager(extra_modules: Iterable[str] = ()) -> Manager:
    """The process-wide manager, built on first use from the ``rcdm`` entry points (plus ``--plugin`` modules)."""
    global _MANAGER
    if _MANAGER is None:
        m = Manager()
        m.load_entry_points()
        _MANAGER = m
    for dotted in extra_modules:
        if dotted not in _MANAGER.plugins:
            _MANAGER.load_module_path(dotted)
    _MANAGER.collect()
    return _MANAGER


def set_manager(manager: Manager | None) -> None:
    """Replace the process-wide manager (tests; research code that builds its own)."""
    global _MANAGER
    _MANAGER = manager


def ensure_importable_plugins() -> None:
    """Running from a source tree without installation: make ``plugins/`` importable."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(here, "plugins")
    if os.path.isdir(path) and path not in sys.path:
        sys.path.append(path)
