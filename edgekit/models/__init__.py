"""Model catalogue, cache and GGUF checks."""

from edgekit.models.catalog import CATALOG, DEFAULT_MODEL, CatalogEntry
from edgekit.models.gguf import GGUFInfo, check_gguf, read_gguf
from edgekit.models.store import ResolvedModel, cache_root, list_models, lookup, pull, remove, resolve

__all__ = [
    "CATALOG", "DEFAULT_MODEL", "CatalogEntry", "GGUFInfo", "check_gguf", "read_gguf", "ResolvedModel",
    "cache_root", "list_models", "lookup", "pull", "remove", "resolve",
]
