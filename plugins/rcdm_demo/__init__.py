"""First-party rcdm plugin rcdm_demo (registered through the rcdm entry-point group)."""
