"""dgpu.node."""
