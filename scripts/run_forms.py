"""Each deployment's own run form: its parameter schema, from the flow's and the catalog's.

Prefect builds one schema per flow, from its signature and docstring; `deployments.ui` turns it
into the deployment's (descriptions, the fixed script or group read-only, the flags a script
allows). Served deployments get it before they register (`with_run_form`); `prefect deploy`
always sends the flow's schema, so `scripts.setup --deploy` applies the deployment's afterwards
(`apply_run_forms`). See docs/prefect.md, "Run form".
"""

from __future__ import annotations

from typing import Any

from prefect import Flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentUpdate
from prefect.deployments.runner import RunnerDeployment
from prefect.utilities.callables import ParameterSchema, parameter_schema

from deployments.catalog import Catalog
from deployments.specs import SCRIPT, DeploymentSpec, deployment_specs
from deployments.ui import parameter_schema as deployment_parameter_schema
from flows.sync_group import sync_group
from flows.sync_script import sync_script


def flow_of(spec: DeploymentSpec) -> Flow[..., Any]:
    return sync_script if spec.kind == SCRIPT else sync_group


def run_form(catalog: Catalog, spec: DeploymentSpec) -> ParameterSchema:
    base = parameter_schema(flow_of(spec)).model_dump(exclude_unset=True)
    return ParameterSchema(**deployment_parameter_schema(base, catalog, spec.kind, spec.name))


def with_run_form(deployment: RunnerDeployment, catalog: Catalog, spec: DeploymentSpec) -> RunnerDeployment:
    # A private attribute, set the way Prefect's own `prefect deploy` sets it.
    deployment._parameter_openapi_schema = run_form(catalog, spec)
    return deployment


async def apply_run_forms(client: PrefectClient, catalog: Catalog) -> int:
    """Give every deployed catalog deployment its own run form; return how many were updated."""
    updated = 0
    for spec in deployment_specs(catalog):
        deployment = await client.read_deployment_by_name(spec.full_name)
        schema = run_form(catalog, spec).model_dump(exclude_unset=True)
        await client.update_deployment(deployment.id, DeploymentUpdate(parameter_openapi_schema=schema))
        updated += 1
    return updated
