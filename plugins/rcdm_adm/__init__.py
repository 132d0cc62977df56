"""First-party rcdm plugin rcdm_adm (registered through the rcdm entry-point group)."""
