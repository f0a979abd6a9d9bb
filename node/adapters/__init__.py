"""dgpu.node adapters: the only code in the node that does I/O (Docker, NVML, SQLite, ...)."""
