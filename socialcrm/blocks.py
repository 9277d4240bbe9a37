"""Prefect Secret blocks from a config's ``${ENV}`` references.

On a workstation secrets come from the environment; on a Prefect server they belong in
Secret blocks, which workers read at run time and the UI never shows. This moves them
across once: one block per environment variable, and optionally a copy of the config
that refers to the blocks. Values are read and saved, never printed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from socialcrm.config import ConfigError, load_settings

_ENV_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


@dataclass(frozen=True)
class SecretReference:
    config_key: str
    env_var: str
    ref: str
    default: str | None

    @property
    def block_name(self) -> str:
        return "socialcrm-" + self.env_var.lower().replace("_", "-")


def secret_references(data: Any, prefix: str = "") -> Iterator[SecretReference]:
    """Every ``${ENV}`` value in the raw config, with the key that holds it."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from secret_references(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from secret_references(value, f"{prefix}[{index}]")
    elif isinstance(data, str):
        match = _ENV_REF.fullmatch(data.strip())
        if match:
            yield SecretReference(prefix, match["name"], match[0], match["default"])


@dataclass
class BlockResult:
    reference: SecretReference
    action: str  # created | updated | kept | missing
    from_fallback: bool = False  # the variable was unset: the config's ``:-`` value was saved


def save_secret_blocks(config: str | Path, *, overwrite: bool = False) -> list[BlockResult]:
    """Create a Secret block per environment variable the config names."""
    from prefect.blocks.system import Secret

    path = Path(config)
    load_settings(path)  # a config that does not load is reported before anything is saved
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    results: list[BlockResult] = []
    seen: set[str] = set()
    for reference in secret_references(data):
        if reference.env_var in seen:
            continue
        seen.add(reference.env_var)
        value = os.environ.get(reference.env_var) or reference.default
        fallback = not os.environ.get(reference.env_var)
        if not value:
            results.append(BlockResult(reference, "missing"))
            continue
        try:
            Secret.load(reference.block_name)
            exists = True
        except ValueError:
            exists = False
        if exists and not overwrite:
            results.append(BlockResult(reference, "kept"))
            continue
        Secret(value=value).save(reference.block_name, overwrite=True)
        results.append(BlockResult(reference, "updated" if exists else "created", fallback))
    return results


def config_with_blocks(config: str | Path, results: list[BlockResult]) -> str:
    """The config's text with each saved reference pointing at its block; comments kept."""
    text = Path(config).read_text(encoding="utf-8")
    for result in results:
        if result.action == "missing":
            continue
        pattern = re.compile(
            r"\$\{" + re.escape(result.reference.env_var) + r"(?::-[^}]*)?\}",
        )
        text = pattern.sub(f"prefect-secret:{result.reference.block_name}", text)
    return text


def describe(results: list[BlockResult]) -> list[str]:
    """One line per block, naming variables and config keys only."""
    lines = []
    for result in results:
        ref = result.reference
        if result.action == "missing":
            lines.append(f"missing  {ref.block_name}: ${ref.env_var} is not set ({ref.config_key})")
        elif result.from_fallback:  # a sandbox default, most likely: say so
            lines.append(
                f"{result.action:<8} {ref.block_name} from the config's fallback value: "
                f"${ref.env_var} is not set ({ref.config_key})"
            )
        else:
            lines.append(
                f"{result.action:<8} {ref.block_name} from ${ref.env_var} ({ref.config_key})"
            )
    return lines


def check_no_missing(results: list[BlockResult]) -> None:
    missing = [r.reference.env_var for r in results if r.action == "missing"]
    if missing:
        raise ConfigError(
            "set these environment variables and run again: " + ", ".join(sorted(missing))
        )
