"""First-party rcdm plugin rcdm_data (registered through the rcdm entry-point group)."""
