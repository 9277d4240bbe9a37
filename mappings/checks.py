"""Static checks of a spec against destination metadata and the columns a flow provides.

These run before any record moves (``socialcrm mapping check``), so that a spec that can
never work fails once, with a line per problem, instead of failing every record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import pandas as pd

from mappings import fieldtypes
from mappings.spec import FieldSpec, MappingSpec
from mappings.transforms import TRANSFORMS, Scalar, parse_datetime
from socialcrm.records import DestinationField

Operation = Literal["upsert", "create", "update"]


def _constant_family(value: Scalar) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return fieldtypes.BOOLEAN
    if isinstance(value, int):
        return fieldtypes.INTEGER
    if isinstance(value, float):
        return fieldtypes.NUMERIC
    return fieldtypes.STRING


def produced_family(spec: FieldSpec) -> str | None:
    """The type family a field's value surely has, when the spec alone tells it."""
    if "value" in spec.model_fields_set:
        produced = _constant_family(spec.value)
    elif spec.template is not None:
        produced = fieldtypes.STRING
    else:
        produced = None
    for step in spec.transforms:
        definition = TRANSFORMS[step.name]
        if definition.produces is not None:
            produced = definition.produces
        elif step.name == "default" and produced is None:
            continue
    return produced


def never_empty(spec: FieldSpec) -> bool:
    """Whether every row gets a value: a constant, a trailing default, or ``required``."""
    if spec.required:
        return True
    guaranteed = "value" in spec.model_fields_set and _non_empty(spec.value)
    for step in spec.transforms:
        if step.name == "default":
            guaranteed = guaranteed or _non_empty(step.arg)
        elif TRANSFORMS[step.name].may_null:
            guaranteed = False
    return guaranteed


def _non_empty(value: Scalar) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _constant_problem(name: str, value: Scalar, dest: DestinationField, spec: FieldSpec) -> str:
    kind = fieldtypes.family(dest.type)
    if value is None:
        return ""
    if kind == fieldtypes.STRING and not isinstance(value, str):
        return f"constant {value!r} is not text but {dest.name} is {dest.type}"
    if kind in (fieldtypes.NUMERIC, fieldtypes.INTEGER) and (
        isinstance(value, bool) or not isinstance(value, int | float)
    ):
        return f"constant {value!r} is not a number but {dest.name} is {dest.type}"
    if kind == fieldtypes.INTEGER and isinstance(value, float) and not value.is_integer():
        return f"constant {value!r} is not a whole number but {dest.name} is {dest.type}"
    if kind == fieldtypes.BOOLEAN and not isinstance(value, bool):
        return f"constant {value!r} is not true/false but {dest.name} is {dest.type}"
    if kind in (fieldtypes.DATETIME, fieldtypes.DATE):
        parsed = parse_datetime(pd.Series([str(value)], dtype="str"))
        if not isinstance(value, str) or parsed.isna().iloc[0]:
            return f"constant {value!r} is not an ISO 8601 date but {dest.name} is {dest.type}"
    if isinstance(value, str) and spec.transforms == ():
        if dest.restricted_picklist and dest.picklist_values and value not in dest.picklist_values:
            allowed = ", ".join(dest.picklist_values[:6])
            return f"constant {value!r} is not allowed in the restricted picklist ({allowed})"
        units = len(value.encode("utf-16-le", errors="surrogatepass")) // 2
        if dest.length and units > dest.length and spec.on_too_long == "reject":
            return (
                f"constant is {units} characters, {dest.name} allows {dest.length} (policy: reject)"
            )
    return ""


def check_spec(
    spec: MappingSpec,
    fields: Mapping[str, DestinationField],
    *,
    operation: Operation | None = None,
) -> list[str]:
    """Problems that would make every record fail, one human line each.

    Args:
        spec: the loaded spec.
        fields: the destination object's field metadata by name.
        operation: how records are written; defaults to the spec's own ``operation``.
    """
    operation = operation or spec.operation
    obj = spec.object_name
    problems: list[str] = []

    def problem(name: str | None, text: str) -> None:
        where = f"field {name}: " if name else ""
        problems.append(f"{spec.origin}: {where}{text}")

    for name, field_spec in spec.fields.items():
        dest = fields.get(name)
        if dest is None:
            problem(name, f"{obj} has no such field")
            continue
        if operation == "create" and not dest.createable:
            problem(name, f"{obj}.{name} cannot be set on create")
        elif operation == "update" and not dest.updateable:
            problem(name, f"{obj}.{name} cannot be updated")
        elif operation == "upsert" and not (dest.createable or dest.updateable):
            problem(name, f"{obj}.{name} can be neither created nor updated")
        if "value" in field_spec.model_fields_set:
            found = _constant_problem(name, field_spec.value, dest, field_spec)
            if found:
                problem(name, found)
        kind = fieldtypes.family(dest.type)
        produced = produced_family(field_spec)
        if not fieldtypes.accepts(kind, produced) and "value" not in field_spec.model_fields_set:
            problem(name, f"the mapping yields {produced} values but {name} is {dest.type}")

    if operation != "update":
        for name, dest in fields.items():
            if not dest.required_on_create:
                continue
            mapped = spec.fields.get(name)
            if mapped is None:
                problem(name, f"{obj} requires it on create but the spec does not map it")
            elif not never_empty(mapped):
                problem(
                    name,
                    f"{obj} requires it on create but it may be empty: add a default "
                    "transform, a constant value or required: true",
                )

    if spec.external_id is not None:
        dest = fields.get(spec.external_id)
        if dest is None:
            problem(None, f"external_id {spec.external_id}: {obj} has no such field")
        elif not dest.external_id and dest.type.lower() != "id":
            problem(
                None, f"external_id {spec.external_id}: {obj}.{dest.name} is not an external id"
            )
        if spec.external_id not in spec.fields:
            problem(None, f"external_id {spec.external_id} is not mapped by any field")
    elif operation == "upsert":
        problem(None, "operation upsert needs an external_id field to match records on")
    return problems


def check_sources(spec: MappingSpec, columns: Iterable[str]) -> list[str]:
    """Columns the spec reads that the input lacks; they would be empty in every record."""
    available = set(columns)
    problems = []
    for name, field_spec in spec.fields.items():
        for column in field_spec.columns:
            if column not in available:
                problems.append(
                    f"{spec.origin}: field {name}: column {column!r} is not in the input "
                    "(every row would be empty)"
                )
    return problems
