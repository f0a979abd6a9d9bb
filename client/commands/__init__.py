"""The renter commands of ``dgpu``, one module per resource of the node's API:
``offers``, ``jobs`` (rent, jobs), ``wallet``, ``login``. The parser is in ``client/cli.py``."""
