"""The node's local HTTP API (FastAPI); ``server.py`` explains how it runs."""

from dgpu.node.adapters.bootstrap_client import fetch_verifier as fetch_verifier

from .context import ApiContext as ApiContext
from .server import ApiNode as ApiNode
from .server import create_node_api as create_node_api
from .server import serve_node_api as serve_node_api

__all__ = ["ApiContext", "ApiNode", "create_node_api", "fetch_verifier", "serve_node_api"]
