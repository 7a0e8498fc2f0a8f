"""Access to the catalog configured for this process (POLIGRAPH_CATALOG)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from deployments.models import Catalog, load_catalog
from flows.settings import get_settings


@lru_cache(maxsize=4)
def _load(path: Path) -> Catalog:
    return load_catalog(path)


def get_catalog() -> Catalog:
    return _load(get_settings().catalog)
