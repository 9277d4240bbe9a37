"""Mapping specs: the YAML files users copy and edit, loaded into a validated model.

Every error a broken spec can hold is found at load time and reported as one line naming
the file, the destination field and the key, because the person reading it is editing
YAML, not Python.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mappings.transforms import TRANSFORMS, LookupArg, Scalar, lookup_table


class MappingError(ValueError):
    """A broken spec file; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _SpecLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``no``, ``on``, ``yes`` as booleans; here only true/false are.

    Otherwise a lookup ``{no: Norway}`` or a constant ``value: off`` silently becomes a bool.
    """


_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class TransformStep(BaseModel):
    """One step of a field's ``transforms`` list: ``trim`` or ``{truncate: 40}``."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    arg: Any = None

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, raw: Any) -> Any:
        if isinstance(raw, TransformStep):
            return raw
        if isinstance(raw, str):
            name, arg = raw, None
        elif isinstance(raw, Mapping) and len(raw) == 1:
            name, arg = next(iter(raw.items()))
        elif isinstance(raw, Mapping) and set(raw) >= {"name"}:
            name, arg = raw["name"], raw.get("arg")
        else:
            raise ValueError(f"a transform is a name or a one-key mapping, got {raw!r}")
        definition = TRANSFORMS.get(str(name))
        if definition is None:
            known = ", ".join(TRANSFORMS)
            raise ValueError(f"unknown transform {name!r} (known: {known})")
        try:
            parsed = definition.parse(arg)
        except ValueError as error:
            raise ValueError(f"transform {name}: {error}") from None
        return {"name": str(name), "arg": parsed}

    def describe(self) -> str:
        return self.name if self.arg is None else f"{self.name}: {self.arg!r}"


def template_columns(template: str) -> tuple[str, ...]:
    """Column names used as ``{placeholders}`` (dotted names such as ``author.handle`` too)."""
    return tuple(name for _, name, _, _ in string.Formatter().parse(template) if name is not None)


class FieldSpec(BaseModel):
    """How one destination field is filled: exactly one of value, source or template."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: Scalar = None
    source: str | None = None
    template: str | None = None
    transforms: tuple[TransformStep, ...] = ()
    required: bool = False
    on_too_long: Literal["truncate", "reject"] = "truncate"
    # None: drop values the destination type cannot hold (null + warning), but reject values
    # outside a restricted picklist: guessing a picklist value is worse than a dead letter.
    on_invalid: Literal["drop", "reject"] | None = None
    # Sent when the record is created, never on an update: after that the field is the
    # salesperson's (a Company they typed must survive the person's next engagement).
    create_only: bool = False

    @model_validator(mode="after")
    def _one_origin(self) -> FieldSpec:
        given = [key for key in ("value", "source", "template") if key in self.model_fields_set]
        if len(given) != 1:
            found = " and ".join(given) if given else "none"
            raise ValueError(f"needs exactly one of value, source, template (found {found})")
        if self.template is not None:
            try:
                parsed = list(string.Formatter().parse(self.template))
            except ValueError as error:
                raise ValueError(f"template: {error}") from None
            for _, name, spec, conversion in parsed:
                if name == "" or spec or conversion:
                    raise ValueError("template: placeholders are plain column names like {handle}")
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        """Every input column this field reads (source, placeholders, coalesce columns)."""
        used: list[str] = []
        if self.source is not None:
            used.append(self.source)
        if self.template is not None:
            used.extend(template_columns(self.template))
        for step in self.transforms:
            if step.name == "coalesce":
                used.extend(step.arg)
        return tuple(dict.fromkeys(used))


class MappingSpec(BaseModel):
    """A whole spec: which destination object, how records are written, and the fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    object_name: str = Field(alias="object", min_length=1)
    operation: Literal["upsert", "create", "update"] = "upsert"
    external_id: str | None = None
    description: str | None = None
    lookups: dict[str, dict[str, Scalar]] = Field(default_factory=dict)
    fields: dict[str, FieldSpec] = Field(min_length=1)
    origin: str = Field(default="<inline spec>", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _normalise_lookups(cls, raw: Any) -> Any:
        if isinstance(raw, Mapping) and isinstance(raw.get("lookups"), Mapping):
            tables = {}
            for name, table in raw["lookups"].items():
                try:
                    tables[str(name)] = lookup_table(table)
                except ValueError as error:
                    raise ValueError(f"lookups: {name}: {error}") from None
            raw = {**raw, "lookups": tables}
        return raw

    @model_validator(mode="after")
    def _lookup_names_exist(self) -> MappingSpec:
        for field_name, field in self.fields.items():
            for step in field.transforms:
                arg = step.arg
                if (
                    isinstance(arg, LookupArg)
                    and isinstance(arg.table, str)
                    and arg.table not in self.lookups
                ):
                    known = ", ".join(self.lookups) or "none defined"
                    raise ValueError(
                        f"field {field_name}: transform lookup: no lookup table named "
                        f"{arg.table!r} (tables: {known})"
                    )
        return self

    @model_validator(mode="after")
    def _external_id_on_every_write(self) -> MappingSpec:
        field = self.fields.get(self.external_id or "")
        if field is not None and field.create_only:
            raise ValueError(
                f"field {self.external_id}: create_only: the external id goes on every "
                "upsert (it finds the record)"
            )
        return self

    @property
    def name(self) -> str:
        return self.origin

    @property
    def create_only(self) -> frozenset[str]:
        """The destination fields an update leaves alone."""
        return frozenset(name for name, field in self.fields.items() if field.create_only)


def _error_lines(origin: str, error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        message = str(item["msg"]).removeprefix("Value error, ")
        if len(loc) >= 2 and loc[0] == "fields":
            where = f"field {loc[1]}"
            # Drop pydantic's internal steps (index, model name) but keep the YAML key.
            keys = [part for part in loc[2:] if not part.isdigit() and part != "TransformStep"]
            if keys and keys[0] != "transforms":
                where += f": {keys[0]}"
            elif loc[2:3] == ["transforms"] and len(loc) > 3 and loc[3].isdigit():
                where += f": transforms[{loc[3]}]"
            lines.append(f"{origin}: {where}: {message}")
        elif loc:
            lines.append(f"{origin}: {'.'.join(loc)}: {message}")
        else:
            lines.append(f"{origin}: {message}")
    return lines


def parse_spec(data: Any, origin: str = "<inline spec>") -> MappingSpec:
    """Validate an already-parsed spec (a mapping); ``origin`` names it in error messages."""
    if not isinstance(data, Mapping):
        raise MappingError([f"{origin}: a spec must be a mapping with object and fields"])
    try:
        return MappingSpec.model_validate({**data, "origin": origin})
    except ValidationError as error:
        raise MappingError(_error_lines(origin, error)) from None


def load_spec(path: str | Path) -> MappingSpec:
    """Read and validate a YAML spec; every problem names the file, field and key."""
    spec_path = Path(path)
    try:
        data = yaml.load(spec_path.read_text(encoding="utf-8"), Loader=_SpecLoader)  # noqa: S506
    except OSError as error:
        raise MappingError([f"{spec_path.name}: cannot read: {error.strerror}"]) from None
    except yaml.YAMLError as error:
        raise MappingError([f"{spec_path.name}: not valid YAML: {error}"]) from None
    return parse_spec(data, origin=spec_path.name)
