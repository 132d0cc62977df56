"""rcdm_core: the kernel of rcdm (interfaces, hooks, plugin manager, shared machinery, CLI).

``import rcdm_core as rc`` then ``rc.load_encoder``, ``rc.build_denoiser``, ``rc.load_denoiser``,
``rc.get_sampler``, ``rc.run_probe``, ``rc.hookimpl``. rcdm_core never imports a plugin.
"""

from __future__ import annotations

import pluggy

hookimpl = pluggy.HookimplMarker("rcdm")

from .api import (
    build_denoiser,
    get_sampler,
    load_denoiser,
    load_encoder,
    parse_sampler_spec,
    run_probe,
    save_denoiser,
)  # noqa: E402
from .context import ArmRuntime, ProbeContext  # noqa: E402
from .errors import CheckpointError, ConfigError, DataError, RcdmError  # noqa: E402
from .interfaces import (  # noqa: E402
    ConditionalDenoiser,
    DataSource,
    Encoder,
    LayerSelector,
    Probe,
    Representation,
    Sampler,
)
from .plugins import Manager, get_manager, set_manager  # noqa: E402
from .records import (  # noqa: E402
    Arm,
    CommandRecord,
    DataSourceRecord,
    DenoiserRecord,
    EncoderRecord,
    Features,
    LayerSelectorRecord,
    Option,
    ProbeRecord,
    ProbeResult,
    SamplerRecord,
)

__version__ = "0.1.0"

__all__ = [
    "hookimpl",
    "load_encoder",
    "build_denoiser",
    "load_denoiser",
    "get_sampler",
    "run_probe",
    "save_denoiser",
    "parse_sampler_spec",
    "ArmRuntime",
    "ProbeContext",
    "RcdmError",
    "ConfigError",
    "CheckpointError",
    "DataError",
    "Encoder",
    "LayerSelector",
    "Representation",
    "ConditionalDenoiser",
    "Sampler",
    "Probe",
    "DataSource",
    "Manager",
    "get_manager",
    "set_manager",
    "Arm",
    "CommandRecord",
    "DataSourceRecord",
    "DenoiserRecord",
    "EncoderRecord",
    "Features",
    "LayerSelectorRecord",
    "Option",
    "ProbeRecord",
    "ProbeResult",
    "SamplerRecord",
]
