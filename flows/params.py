"""The parameter fields every flow shares, shaped for the Prefect UI's run form.

The account field offers the configured accounts as a choice. The names are read when the
flow module is imported: by `prefect deploy` (which stores the form's schema) with
``SOCIALCRM_CONFIG`` pointing at the config, and by a worker. Only the names are read, so
no secret needs to be present; without a readable config the field is free text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml
from prefect.utilities.annotations import quote
from pydantic import BaseModel, Field

DEFAULT_CONFIG = "socialcrm.yaml"


def configured_accounts(path: str | None = None) -> list[str]:
    """Account names in the config at ``path`` (default: $SOCIALCRM_CONFIG), or none."""
    target = Path(path or os.environ.get("SOCIALCRM_CONFIG") or DEFAULT_CONFIG)
    try:
        data = yaml.safe_load(target.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return []
    accounts = data.get("accounts") if isinstance(data, dict) else None
    if not isinstance(accounts, list):
        return []
    names = [a.get("name") for a in accounts if isinstance(a, dict)]
    return [name for name in names if isinstance(name, str) and name]


def _account_choices(schema: dict[str, Any]) -> None:
    names = configured_accounts()
    if names:
        schema["anyOf"] = [{"type": "string", "enum": names}, {"type": "null"}]


class RunTarget(BaseModel):
    """Which config and which account a run works on."""

    config: str = Field(
        DEFAULT_CONFIG,
        title="Config file",
        description="Path of the socialcrm YAML config, as seen by the worker",
    )
    account: str | None = Field(
        None,
        title="Account",
        description="Account name from the config; empty means the first",
        json_schema_extra=_account_choices,
    )


C = TypeVar("C")


def as_is(context: C) -> C:
    """Hand a run's shared context, or a batch of rows, to a task without Prefect walking
    through it.

    Prefect visits every task argument looking for futures to wait on. A run context
    holds none, but it holds every row the run has delivered (the walk would cost more
    per task as the run grows) and tallies other threads update (the walk would trip
    over a set changing size). A batch of 2,000 people costs over 100,000 visits, about a second
    per task on a 2-core machine (measured by the benchmark).
    """
    return cast(C, quote(context))
