"""The mapping engine: YAML specs applied to pandas DataFrames, vectorised.

Imports only the core package (``socialcrm.records``), never connectors or flows: the
engine knows field metadata, not HTTP.
"""

from __future__ import annotations

from pathlib import Path

from mappings.checks import check_sources, check_spec
from mappings.engine import MappingResult, apply_spec, json_records
from mappings.spec import FieldSpec, MappingError, MappingSpec, TransformStep, load_spec, parse_spec
from mappings.transforms import TRANSFORMS

SPEC_DIR = Path(__file__).parent
"""Where the shipped specs live (``lead.salesforce.yaml``, ...)."""

__all__ = [
    "SPEC_DIR",
    "TRANSFORMS",
    "FieldSpec",
    "MappingError",
    "MappingResult",
    "MappingSpec",
    "TransformStep",
    "apply_spec",
    "check_sources",
    "check_spec",
    "json_records",
    "load_spec",
    "parse_spec",
]
