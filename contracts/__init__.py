"""dgpu.contracts."""
