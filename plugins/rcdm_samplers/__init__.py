"""First-party rcdm plugin rcdm_samplers (registered through the rcdm entry-point group)."""
