"""Model catalogue, cache, integrity (sha256 manifests) and GGUF checks."""

from edgekit.models.catalog import CATALOG, DEFAULT_MODEL, CatalogEntry
from edgekit.models.gguf import GGUFInfo, arch_is_known, check_gguf, read_gguf
from edgekit.models.integrity import CORRUPT, MISSING, UNVERIFIED, VERIFIED, Check, ModelCorrupt
from edgekit.models.store import (
    Progress,
    PullResult,
    ResolvedModel,
    cache_root,
    cache_status,
    cached_path,
    is_cached,
    list_models,
    lookup,
    pull,
    pull_model,
    remove,
    resolve,
    verify_models,
)
from edgekit.models.variants import find_variant, list_variants, variant_file, variant_id, variant_rows, variants_dir

__all__ = [
    "find_variant",
    "list_variants",
    "variant_file",
    "variant_id",
    "variant_rows",
    "variants_dir",
    "CATALOG",
    "DEFAULT_MODEL",
    "CatalogEntry",
    "GGUFInfo",
    "arch_is_known",
    "check_gguf",
    "read_gguf",
    "ResolvedModel",
    "cache_root",
    "list_models",
    "lookup",
    "pull",
    "remove",
    "resolve",
    "Progress",
    "PullResult",
    "cache_status",
    "cached_path",
    "is_cached",
    "pull_model",
    "verify_models",
    "Check",
    "ModelCorrupt",
    "VERIFIED",
    "UNVERIFIED",
    "CORRUPT",
    "MISSING",
]
