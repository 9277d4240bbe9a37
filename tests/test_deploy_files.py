"""The deployment file parses, names real flows, and its parameters fit their forms."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule
from pydantic import BaseModel

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "prefect.yaml"
SPEC = yaml.safe_load(DEPLOY.read_text())


@pytest.mark.parametrize("deployment", SPEC["deployments"], ids=lambda d: d["name"])
def test_each_deployment_points_at_a_flow_with_valid_parameters(deployment: dict) -> None:
    path, _, name = deployment["entrypoint"].partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, name)
    assert flow.name in deployment["name"]
    params = dict(deployment["parameters"]["params"])
    params["config"] = "socialcrm.yaml"  # the {{ $VAR }} is filled in at deploy time
    model = flow.parameters.properties["params"]
    assert model  # the flow takes one pydantic model: the UI renders it as a form
    annotation = flow.fn.__annotations__["params"]
    klass = getattr(module, annotation) if isinstance(annotation, str) else annotation
    assert issubclass(klass, BaseModel)
    klass.model_validate(params)
    for schedule in deployment["schedules"]:
        CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    assert deployment["work_pool"]["name"] == "socialcrm-process"


def test_flow_forms_have_titles_and_descriptions() -> None:
    from flows.leads import leads

    schema = leads.parameters.model_dump()
    definitions = schema["definitions"]["LeadsRun"]["properties"]
    for field in ("config", "account", "dry_run", "limit", "since"):
        assert definitions[field].get("title") and definitions[field].get("description")
