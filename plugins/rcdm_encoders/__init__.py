"""First-party rcdm plugin rcdm_encoders (registered through the rcdm entry-point group)."""
