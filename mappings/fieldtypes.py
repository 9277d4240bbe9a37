"""Destination field types grouped into the families the engine casts to.

Salesforce, HubSpot and Zendesk name their types differently; the engine only needs to
know which Python value a field accepts.
"""

from __future__ import annotations

STRING, NUMERIC, INTEGER, BOOLEAN, DATETIME, DATE = (
    "string",
    "numeric",
    "integer",
    "boolean",
    "datetime",
    "date",
)

_FAMILIES: dict[str, str] = {
    **dict.fromkeys(
        (
            "string",
            "textarea",
            "url",
            "email",
            "phone",
            "picklist",
            "multipicklist",
            "combobox",
            "id",
            "reference",
            "encryptedstring",
            "text",
        ),
        STRING,
    ),
    **dict.fromkeys(("double", "currency", "percent", "number", "decimal"), NUMERIC),
    **dict.fromkeys(("int", "integer", "long"), INTEGER),
    **dict.fromkeys(("boolean", "checkbox"), BOOLEAN),
    "datetime": DATETIME,
    "date": DATE,
}


def family(field_type: str) -> str | None:
    """The family of a destination type; None for types the engine passes through as-is."""
    return _FAMILIES.get(field_type.lower())


def accepts(destination: str | None, produced: str | None) -> bool:
    """Whether a value of family ``produced`` can be written to a ``destination`` field.

    Numbers and dates print fine into text; text into a number is checked per row, but a
    transform that always yields text (a name, a URL) can never be a number.
    """
    if destination is None or produced is None or destination == produced:
        return True
    if destination == STRING:
        return True
    if {destination, produced} <= {DATETIME, DATE}:
        return True
    return {destination, produced} <= {NUMERIC, INTEGER}
