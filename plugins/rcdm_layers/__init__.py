"""First-party rcdm plugin rcdm_layers (registered through the rcdm entry-point group)."""
