"""Generate `prefect.yaml` from the catalog, for `prefect deploy --all` to the `poligraph` work pool.

python -m deployments.prefect_yaml            # rewrite prefect.yaml
python -m deployments.prefect_yaml --check    # exit 1 when the committed file is stale
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from deployments.catalog import Catalog, load_catalog
from deployments.generated import write_or_check
from deployments.settings import DEFAULT_CATALOG, PACKAGE_ROOT
from deployments.specs import DEPLOYMENT_CONCURRENCY, deployment_specs

PREFECT_YAML = PACKAGE_ROOT / "prefect.yaml"
WORK_POOL = "poligraph"
HEADER = """\
# GENERATED from deployments/catalog.yaml by `python -m deployments.prefect_yaml`. Do not edit:
# change the catalog and regenerate (a test fails when this file is stale).
# Deploy with `python -m scripts.setup --deploy` (work pool, per-script concurrency limits,
# `prefect deploy --all`, pruning of what the catalog no longer has, and the run forms: `prefect
# deploy` builds parameter schemas from the flow's signature only, so setup applies each
# deployment's own schema afterwards).
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the markdown descriptions) as readable `|` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(catalog: Catalog) -> str:
    deployments: list[dict[str, Any]] = []
    for spec in deployment_specs(catalog):
        entry: dict[str, Any] = {
            "name": spec.name,
            "description": spec.description,
            "entrypoint": spec.entrypoint,
            "parameters": spec.parameters,
            "enforce_parameter_schema": True,
            "tags": spec.tags,
            "concurrency_limit": dict(DEPLOYMENT_CONCURRENCY),
            "work_pool": {"name": WORK_POOL},
        }
        if spec.schedules:
            entry["schedules"] = [
                {"cron": s.cron, "timezone": s.timezone, "slug": s.slug, "active": True}
                for s in spec.schedules
            ]
        deployments.append(entry)
    # No pull step: the flows are imported from the installed package (entrypoints are module
    # paths). Without this key `prefect deploy` would add `set_working_directory: <its cwd>`, and
    # every worker machine would need a checkout at that very path.
    document = {
        "name": "poligraph-jobs",
        "prefect-version": "3.9.1",
        "pull": [],
        "deployments": deployments,
    }
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return HEADER + body


def main(argv: list[str]) -> int:
    text = render(load_catalog(DEFAULT_CATALOG))  # the committed catalog, whatever the env says
    return write_or_check({PREFECT_YAML: text}, argv, "deployments.prefect_yaml")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
