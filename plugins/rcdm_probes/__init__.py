"""First-party rcdm plugin rcdm_probes (registered through the rcdm entry-point group)."""
