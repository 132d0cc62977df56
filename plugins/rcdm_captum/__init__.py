"""First-party rcdm plugin rcdm_captum (registered through the rcdm entry-point group)."""
