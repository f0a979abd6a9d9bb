"""dgpu.bootstrap."""
