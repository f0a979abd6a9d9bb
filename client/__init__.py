"""dgpu.client."""
