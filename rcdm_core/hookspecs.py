"""Hook specifications: the plugin author's manual.

A plugin is a module (or object) with functions decorated ``@rcdm_core.hookimpl`` whose names are the hooks
below. It is found through the ``rcdm`` entry-point group (``[project.entry-points.rcdm] myname = "my_module"``)
or loaded from research code with ``--plugin my_module``. Every hook name starts with ``rcdm_``.

Registration hooks are called once when the plugin manager is built; each returns a list of records
(``rcdm_core.records``). Names are global: a second registration of a name is rejected and listed as failed.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("rcdm")


@hookspec
def rcdm_encoders():
    """Return a list of :class:`~rcdm_core.records.EncoderRecord`.

    Called once at start-up. ``factory(arg, weights, trust_checkpoint)`` builds an :class:`Encoder`; ``arg`` is
    what follows a prefix name (``timm:`` + ``resnet18``), else None. Without weights the encoder must be built
    with random weights and set ``random_weights = True``.
    """


@hookspec
def rcdm_layer_selectors():
    """Return a list of :class:`~rcdm_core.records.LayerSelectorRecord`.

    The record's name is the first ``:``-separated word of a layer spec (``backbone``, ``projector``,
    ``block``); ``factory()`` returns a :class:`LayerSelector`.
    """


@hookspec
def rcdm_denoisers():
    """Return a list of :class:`~rcdm_core.records.DenoiserRecord`.

    ``factory(**flags)`` builds a :class:`ConditionalDenoiser` from official-style flags; ``detect(state_dict)``
    says whether a plain state dict is this denoiser's layout (used by ``rc.load_denoiser``).
    """


@hookspec
def rcdm_samplers():
    """Return a list of :class:`~rcdm_core.records.SamplerRecord`; ``factory(steps, **keys)`` -> Sampler."""


@hookspec
def rcdm_probes():
    """Return a list of :class:`~rcdm_core.records.ProbeRecord`; ``factory(**options)`` -> Probe.

    Declare every option the probe reads in ``options``: config keys nobody declared are rejected.
    """


@hookspec
def rcdm_data_sources():
    """Return a list of :class:`~rcdm_core.records.DataSourceRecord` (spec ``name:arg``)."""


@hookspec
def rcdm_commands():
    """Return a list of :class:`~rcdm_core.records.CommandRecord`: extra ``rcdm`` subcommands."""


@hookspec
def rcdm_configure(config):
    """Called with the resolved run config (a dict) before anything is built; may validate or annotate it."""


@hookspec
def rcdm_run_start(ctx):
    """Called once per ``rcdm-run`` after arms and data are ready, before the first probe."""


@hookspec
def rcdm_run_end(ctx, metrics):
    """Called after the last probe with the gathered metrics dict (before the report is written)."""


@hookspec
def rcdm_after_sample(arm, cond, samples):
    """Called after each batch of samples: arm name, conditions (N, D), samples (N, 3, S, S) in [-1, 1]."""


@hookspec(firstresult=True)
def rcdm_probe_call(probe_name, probe, ctx):
    """Runs one probe and returns its ProbeResult; rcdm_core's own implementation calls ``probe.run(ctx)``.

    Plugins wrap it for cross-cutting concerns (timing, autocast, profiling) with ``@hookimpl(wrapper=True)``:
    ``result = yield`` then return it (or a changed one).
    """
