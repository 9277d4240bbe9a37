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
from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_CONFIG = "socialcrm.yaml"


def default_config() -> str:
    """$SOCIALCRM_CONFIG, else ``socialcrm.yaml`` in the working folder."""
    return os.environ.get("SOCIALCRM_CONFIG") or DEFAULT_CONFIG


def configured_accounts(path: str | None = None) -> list[str]:
    """Account names in the config at ``path`` (default: $SOCIALCRM_CONFIG), or none."""
    target = Path(path or default_config())
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
    """Which config and which account a run works on.

    An unknown key is an error: a misspelt ``dryrun`` must not start a run that writes.
    The config defaults to $SOCIALCRM_CONFIG at run time: a run started with
    ``--param params='{...}'`` replaces the deployment's whole ``params`` object (Prefect
    merges parameters by top-level name), config path included.
    """

    model_config = ConfigDict(extra="forbid")

    config: str = Field(
        default_factory=default_config,
        title="Config file",
        description="Path of the socialcrm YAML config, as seen by the worker "
        "(empty: $SOCIALCRM_CONFIG, else socialcrm.yaml)",
    )
    account: str | None = Field(
        None,
        title="Account",
        description="Account name from the config; empty means the first",
        json_schema_extra=_account_choices,
    )

    @field_validator("config")
    @classmethod
    def _blank_means_default(cls, config: str) -> str:
        return config.strip() or default_config()


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
