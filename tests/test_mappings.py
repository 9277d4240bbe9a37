"""The mapping engine: transforms, spec loading, static checks and apply_spec on Leads."""

from __future__ import annotations

import gc
import importlib.util
import json
import random
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mappings import (
    SPEC_DIR,
    TRANSFORMS,
    MappingError,
    MappingSpec,
    apply_spec,
    check_sources,
    check_spec,
    load_spec,
    parse_spec,
)
from mappings import text as text_module
from mappings.columnar import Units, collapse_spaces
from mappings.engine import EMAIL, WEB_URL
from mappings.spec import TransformStep
from mappings.transforms import TransformContext, format_datetime
from mappings.validate import _INVALID_WEB_URL
from socialcrm.records import DestinationField

PLATFORMS = ("X", "Mastodon", "Instagram", "Facebook", "LinkedIn", "Bluesky")


def lead_fields() -> dict[str, DestinationField]:
    """A realistic Lead describe, trimmed to what the shipped spec touches."""
    fields = [
        DestinationField("Id", "id", length=18, nillable=False, createable=False, updateable=False),
        DestinationField("FirstName", "string", length=40),
        DestinationField("LastName", "string", length=80, nillable=False),
        DestinationField("Company", "string", length=255, nillable=False),
        DestinationField("Email", "email", length=80),
        DestinationField("City", "string", length=40),
        DestinationField("Description", "textarea", length=32000),
        DestinationField("LeadSource", "picklist", length=255, picklist_values=("Web", "Social")),
        DestinationField(
            "Status",
            "picklist",
            length=255,
            nillable=False,
            defaulted_on_create=True,
            restricted_picklist=True,
            picklist_values=("Open - Not Contacted", "Working - Contacted"),
        ),
        DestinationField("Social_Profile_Id__c", "string", length=80, external_id=True),
        DestinationField("Social_Handle__c", "string", length=80),
        DestinationField("Social_Profile_URL__c", "url", length=255),
        DestinationField(
            "Social_Platform__c",
            "picklist",
            length=255,
            restricted_picklist=True,
            picklist_values=PLATFORMS,
        ),
        DestinationField("Engagement_Score__c", "double"),
        DestinationField("Helpdesk_Ticket_URL__c", "url", length=255),
        DestinationField("Engagement_Count__c", "double"),
        DestinationField("Last_Engaged_At__c", "datetime"),
    ]
    return {field.name: field for field in fields}


LEAD = lead_fields()


@pytest.fixture(scope="module")
def lead_spec() -> MappingSpec:
    return load_spec(SPEC_DIR / "lead.salesforce.yaml")


def person(**overrides: Any) -> dict[str, Any]:
    """One lead candidate row as the leads flow builds it."""
    row: dict[str, Any] = {
        "record_key": "x:12345",
        "person_key": "x:12345",
        "platform": "x",
        "user_id": "12345",
        "handle": "ann_dev",
        "display_name": "Ann Smith",
        "bio": "Building things",
        "location": "Paris",
        "profile_url": "https://x.com/ann_dev",
        "followers": 120,
        "following": 80,
        "verified": False,
        "email": None,
        "score": 7.25,
        "engagement_count": 3,
        "mention_count": 1,
        "reply_count": 1,
        "quote_count": 0,
        "repost_count": 0,
        "like_count": 1,
        "first_engaged_at": "2026-11-19T09:00:00+00:00",
        "last_engaged_at": "2026-11-20T10:00:00+00:00",
        "engagement_summary": "reply: love it\nhttps://x.com/brand/status/1",
        "top_post_url": "https://x.com/brand/status/1",
        "helpdesk_ticket_url": "https://acme.zendesk.com/agent/tickets/7",
    }
    row.update(overrides)
    if "person_key" in overrides and "record_key" not in overrides:
        row["record_key"] = overrides["person_key"]
    return row


def frame_of(*rows: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def run(name: str, arg: Any, values: list[Any], frame: pd.DataFrame | None = None) -> list[Any]:
    """One transform over a column, nulls normalised to None for comparison."""
    step = TransformStep.model_validate({name: arg} if arg is not None else name)
    series = pd.Series(
        values, dtype="str" if all(isinstance(v, str | None) for v in values) else None
    )
    context = TransformContext(
        frame=frame if frame is not None else pd.DataFrame(index=series.index),
        lookups={"platforms": {"x": "X", "mastodon": "Mastodon"}},
    )
    out = TRANSFORMS[step.name].apply(series, step.arg, context)
    return [None if pd.isna(v) else v for v in out.tolist()]


def write_spec(tmp_path: Path, text: str, name: str = "broken.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- transforms ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("José Núñez 🇪🇸", "José Núñez"),
        ("🚀🚀", None),
        (".", None),
        ("_", None),
        ("1234", None),
        ("", None),
        ("山田 太郎", "山田 太郎"),
        ("محمد علي", "محمد علي"),
        ("\u202bمحمد علي\u202c\u200f", "محمد علي"),  # RTL embedding and marks
        ("Иван Петров", "Иван Петров"),
        ("देवनागरी नाम", "देवनागरी नाम"),  # combining vowel signs stay
        ("Zoë\u200b Ray\u200d", "Zoë Ray"),  # zero-width space and joiner
        ("A\x00nn\x07 Smith", "Ann Smith"),  # NUL and bell
        ("  Mary \t Jane\nWatson\u00a0 ", "Mary Jane Watson"),
        ("👨\u200d👩\u200d👧 Family ✨", "Family"),
        ("Bob ❤\ufe0f", "Bob"),  # variation selector
        ("𠀋 Lee", "𠀋 Lee"),  # CJK extension B is astral but a letter
        ("O'Brien-Smith Jr.", "O'Brien-Smith Jr."),
        (None, None),
    ],
)
def test_clean_name_keeps_letters_of_every_script_and_drops_symbols(
    raw: str | None, clean: str | None
) -> None:
    assert run("clean_name", None, [raw]) == [clean]


def test_split_name_one_word_is_a_last_name() -> None:
    names = ["Ann Smith", "Cher", "Mary Jane  Watson", None, "  ", " Bob  Lee "]
    assert run("split_name", "first", names) == ["Ann", None, "Mary", None, None, "Bob"]
    assert run("split_name", "last", names) == ["Smith", "Cher", "Jane Watson", None, None, "Lee"]


def test_trim_strips_unicode_and_invisible_spaces_and_nulls_empty_text() -> None:
    values = ["  ann ", "\u00a0\u3000bob\u200b", "\ufeff", "", None, "a b"]
    assert run("trim", None, values) == ["ann", "bob", None, None, None, "a b"]


def test_case_and_truncate() -> None:
    assert run("lowercase", None, ["ÀNN@X.IO", None]) == ["ànn@x.io", None]
    assert run("uppercase", None, ["straße"]) == ["STRASSE"]
    assert run("truncate", 3, ["abcdef", "ab", None]) == ["abc", "ab", None]


def test_url_percent_encodes_the_value() -> None:
    values = ["ann_dev", "a/b?c", "José", None]
    assert run("url", "https://x.com/{value}", values) == [
        "https://x.com/ann_dev",
        "https://x.com/a%2Fb%3Fc",
        "https://x.com/Jos%C3%A9",
        None,
    ]


def test_lookup_by_name_inline_default_and_case() -> None:
    assert run("lookup", "platforms", ["x", "X", "myspace", None]) == ["X", "X", None, None]
    inline = {"table": {"x": "X", "bluesky": "Bluesky"}, "default": "Other"}
    assert run("lookup", inline, ["bluesky", "myspace", None]) == ["Bluesky", "Other", None]


def test_coalesce_and_default_fill_only_nulls() -> None:
    frame = pd.DataFrame({"handle": ["h1", None, "h3"], "user_id": ["1", "2", "3"]})
    assert run("coalesce", ["handle", "user_id"], ["Ann", None, None], frame) == ["Ann", "2", "h3"]
    assert run("default", "Unknown", ["Ann", None]) == ["Ann", "Unknown"]
    assert run("coalesce", ["absent"], ["Ann", None], pd.DataFrame(index=[0, 1])) == ["Ann", None]


def test_round_and_dates() -> None:
    assert run("round", 1, [7.25, 3.14159, None]) == [7.2, 3.1, None]
    assert run("round", 0, ["2.6", "many"]) == [3.0, "many"]  # the cast reports "many" later
    assert run("round", 1, [1.7e308]) == [1.7e308]  # no overflow to inf
    stamps = ["2026-11-20T10:00:00+00:00", "2026-11-20T12:30:15.123456+02:00", "2026-11-20", None]
    assert run("to_datetime", None, stamps) == [
        "2026-11-20T10:00:00.000+0000",
        "2026-11-20T10:30:15.123+0000",
        "2026-11-20T00:00:00.000+0000",
        None,
    ]
    assert run("to_date", None, ["2026-11-20T10:00:00+00:00", "soon"]) == ["2026-11-20", "soon"]


# --- spec loading --------------------------------------------------------------------------


def test_shipped_lead_spec_loads_and_passes_its_checks(lead_spec: MappingSpec) -> None:
    assert lead_spec.object_name == "Lead"
    assert lead_spec.external_id == "Social_Profile_Id__c"
    # What sales may type over: the next engagement's update leaves them alone.
    assert lead_spec.create_only == {"Company", "LeadSource"}
    assert check_spec(lead_spec, LEAD) == []
    assert check_sources(lead_spec, person().keys()) == []


@pytest.mark.parametrize(
    ("field_yaml", "expected"),
    [
        ("{source: handle, transforms: [sparkle]}", "field Foo: transforms[0]: unknown transform"),
        ("{source: handle, value: x}", "field Foo: needs exactly one of value, source, template"),
        ("{transforms: [trim]}", "field Foo: needs exactly one of value, source, template"),
        ("{source: handle, on_too_long: shorten}", "field Foo: on_too_long: Input should be"),
        ("{source: handle, transforms: [{truncate: -1}]}", "field Foo: transforms[0]: transform"),
        ("{source: handle, transforms: [{lookup: nowhere}]}", "field Foo: transform lookup: no"),
        ("{source: handle, colour: red}", "field Foo: colour: Extra inputs are not permitted"),
        ("{template: '{handle!r}'}", "field Foo: template: placeholders are plain column"),
        ("{source: handle, create_only: true}", "field Foo: create_only: the external id goes"),
        ("{source: handle, create_only: maybe}", "field Foo: create_only: Input should be"),
    ],
)
def test_broken_spec_errors_name_file_and_field(
    tmp_path: Path, field_yaml: str, expected: str
) -> None:
    path = write_spec(tmp_path, f"object: Lead\nexternal_id: Foo\nfields:\n  Foo: {field_yaml}\n")
    with pytest.raises(MappingError) as raised:
        load_spec(path)
    assert str(raised.value).startswith("broken.yaml: ")
    assert expected in str(raised.value)


def test_yaml_words_like_no_stay_text(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        "object: Lead\nlookups: {countries: {no: Norway}}\n"
        "fields:\n  Country: {source: c, transforms: [{lookup: countries}]}\n"
        "  Flag: {value: off}\n",
    )
    spec = load_spec(path)
    assert spec.lookups["countries"] == {"no": "Norway"}
    assert spec.fields["Flag"].value == "off"


def test_unreadable_and_invalid_yaml_are_mapping_errors(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match=r"missing\.yaml: cannot read"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(MappingError, match=r"bad\.yaml: not valid YAML"):
        load_spec(write_spec(tmp_path, "fields: [", "bad.yaml"))


# --- check_spec ----------------------------------------------------------------------------


def spec_with(fields: dict[str, Any], **top: Any) -> MappingSpec:
    base: dict[str, Any] = {
        "object": "Lead",
        "external_id": "Social_Profile_Id__c",
        "fields": {
            "Social_Profile_Id__c": {"source": "person_key", "required": True},
            "LastName": {"source": "handle", "transforms": [{"default": "Unknown"}]},
            "Company": {"value": "[not provided]"},
            **fields,
        },
    }
    base.update(top)
    return parse_spec(base, origin="lead.salesforce.yaml")


def test_check_spec_names_each_problem_with_file_and_field() -> None:
    spec = spec_with(
        {
            "Foo__c": {"source": "handle"},
            "Id": {"source": "user_id"},
            "Social_Platform__c": {"value": "Myspace"},
            "Engagement_Score__c": {"value": "high"},
            "Social_Handle__c": {"value": "h" * 81, "on_too_long": "reject"},
            "Last_Engaged_At__c": {"source": "handle", "transforms": ["clean_name"]},
        }
    )
    problems = check_spec(spec, LEAD, operation="create")
    assert "lead.salesforce.yaml: field Foo__c: Lead has no such field" in problems
    assert "lead.salesforce.yaml: field Id: Lead.Id cannot be set on create" in problems
    assert any(
        p.startswith("lead.salesforce.yaml: field Social_Platform__c: constant 'Myspace'")
        and "restricted picklist" in p
        for p in problems
    )
    assert any("field Engagement_Score__c: constant 'high' is not a number" in p for p in problems)
    assert any("field Social_Handle__c: constant is 81 characters" in p for p in problems)
    assert any("field Last_Engaged_At__c: the mapping yields string" in p for p in problems)


def test_check_spec_requires_company_and_a_never_empty_last_name() -> None:
    spec = parse_spec(
        {
            "object": "Lead",
            "external_id": "Social_Profile_Id__c",
            "fields": {
                "Social_Profile_Id__c": {"source": "person_key", "required": True},
                "LastName": {"source": "display_name", "transforms": ["clean_name"]},
            },
        },
        origin="lead.salesforce.yaml",
    )
    problems = check_spec(spec, LEAD)
    assert any(
        "field Company: Lead requires it on create but the spec does not map" in p for p in problems
    )
    assert any(
        "field LastName: Lead requires it on create but it may be empty" in p for p in problems
    )
    assert not any("Status" in p for p in problems)  # defaulted on create
    assert check_spec(spec, LEAD, operation="update") == []


def test_check_spec_external_id_must_be_an_external_id() -> None:
    spec = spec_with({"Social_Handle__c": {"source": "handle"}}, external_id="Social_Handle__c")
    problems = check_spec(spec, LEAD)
    assert (
        "lead.salesforce.yaml: external_id Social_Handle__c: "
        "Lead.Social_Handle__c is not an external id" in problems
    )


def test_check_sources_lists_absent_columns(lead_spec: MappingSpec) -> None:
    columns = [c for c in person() if c not in ("location", "handle")]
    problems = check_sources(lead_spec, columns)
    assert any("field City: column 'location' is not in the input" in p for p in problems)
    assert any("field LastName: column 'handle'" in p for p in problems)


# --- apply_spec ----------------------------------------------------------------------------


def test_apply_maps_a_lead(lead_spec: MappingSpec) -> None:
    result = apply_spec(lead_spec, frame_of(person(email=" Ann@Example.COM ")), LEAD)
    assert result.rejected == [] and result.warnings == []
    assert result.keys == ["x:12345"]
    assert result.records == [
        {
            "Social_Profile_Id__c": "x:12345",
            "FirstName": "Ann",
            "LastName": "Smith",
            "Company": "[not provided]",
            "Email": "ann@example.com",
            "LeadSource": "Social",
            "Social_Platform__c": "X",
            "Social_Handle__c": "ann_dev",
            "Social_Profile_URL__c": "https://x.com/ann_dev",
            "City": "Paris",
            "Description": "reply: love it\nhttps://x.com/brand/status/1",
            "Engagement_Score__c": 7.2,
            "Engagement_Count__c": 3.0,
            "Last_Engaged_At__c": "2026-11-20T10:00:00.000+0000",
            "Helpdesk_Ticket_URL__c": "https://acme.zendesk.com/agent/tickets/7",
        }
    ]
    assert list(result.frame.index) == result.keys


def test_last_name_falls_back_to_handle_then_unknown(lead_spec: MappingSpec) -> None:
    frame = frame_of(
        person(person_key="x:1", display_name="🚀🚀"),
        person(person_key="x:2", display_name=None, handle=None),
    )
    records = apply_spec(lead_spec, frame, LEAD).records
    assert [(r["FirstName"], r["LastName"]) for r in records] == [
        (None, "ann_dev"),
        (None, "Unknown"),
    ]


def test_too_long_handle_is_rejected_and_other_rows_delivered(lead_spec: MappingSpec) -> None:
    frame = frame_of(
        person(person_key="x:1"),
        person(person_key="x:2", handle="h" * 300),
        person(person_key="x:3"),
    )
    result = apply_spec(lead_spec, frame, LEAD)
    assert result.keys == ["x:1", "x:3"]
    [problem] = result.rejected
    assert problem.record_key == "x:2"
    assert problem.field == "Social_Handle__c"
    assert problem.stage == "mapping" and problem.system == "salesforce"
    assert problem.reason == (
        "value is 300 characters, Social_Handle__c allows 80 (policy: reject)"
    )
    assert problem.payload is not None and problem.payload["handle"] == "h" * 300
    json.dumps(problem.payload, allow_nan=False)


def test_too_long_city_is_truncated_with_a_warning(lead_spec: MappingSpec) -> None:
    result = apply_spec(lead_spec, frame_of(person(location="Llanfair" * 10)), LEAD)
    assert result.records[0]["City"] == ("Llanfair" * 10)[:40]
    [warning] = result.warnings
    assert warning.field == "City"
    assert warning.reason == "value is 80 characters, City allows 40 (truncated)"


def test_length_counts_emoji_twice_like_salesforce(lead_spec: MappingSpec) -> None:
    result = apply_spec(lead_spec, frame_of(person(location="🌍" * 30)), LEAD)
    assert result.records[0]["City"] == "🌍" * 20
    assert "value is 60 characters" in result.warnings[0].reason


def test_invalid_email_is_dropped_with_a_warning(lead_spec: MappingSpec) -> None:
    result = apply_spec(lead_spec, frame_of(person(email="ann(at)example")), LEAD)
    assert result.records[0]["Email"] is None
    assert [(w.field, w.reason) for w in result.warnings] == [
        ("Email", "value 'ann(at)example' is not an email (dropped)")
    ]


def test_row_failing_several_fields_gets_one_problem_per_field(lead_spec: MappingSpec) -> None:
    frame = frame_of(person(person_key="x:1"), person(person_key=None, handle="h" * 81))
    frame.loc[1, "record_key"] = "row-2"
    result = apply_spec(lead_spec, frame, LEAD)
    assert result.keys == ["x:1"]
    assert [(p.record_key, p.field) for p in result.rejected] == [
        ("row-2", "Social_Profile_Id__c"),
        ("row-2", "Social_Handle__c"),
    ]
    assert "required but empty" in result.rejected[0].reason


def test_restricted_picklist_value_is_rejected_naming_allowed_values() -> None:
    spec = spec_with({"Social_Platform__c": {"source": "platform"}})
    result = apply_spec(spec, frame_of(person(platform="myspace")), LEAD)
    [problem] = result.rejected
    assert problem.field == "Social_Platform__c"
    assert "'myspace' is not allowed in Social_Platform__c (allowed: X, Mastodon" in problem.reason


def test_text_is_cleaned_of_control_characters_and_blanks(lead_spec: MappingSpec) -> None:
    row = person(engagement_summary="a\x00b\x1bc\n\td\r", location=" \u3000 ")
    record = apply_spec(lead_spec, frame_of(row), LEAD).records[0]
    assert record["Description"] == "abc\n\td"
    assert record["City"] is None


def test_records_are_json_safe_python_values(lead_spec: MappingSpec) -> None:
    frame = frame_of(
        person(person_key="x:1", score=None, engagement_count=None, last_engaged_at=None),
        person(person_key="x:2", score=float("inf"), engagement_count=np.int64(4)),
    )
    result = apply_spec(lead_spec, frame, LEAD)
    json.dumps(result.records, allow_nan=False)
    for record in result.records:
        for value in record.values():
            assert value is None or type(value) in (str, int, float, bool)
    assert result.records[0]["Engagement_Score__c"] is None
    assert result.records[1]["Engagement_Count__c"] == 4.0


def test_template_and_absent_columns_without_metadata() -> None:
    spec = parse_spec(
        {
            "object": "Lead",
            "fields": {
                "Title": {"template": "{handle} on {platform}"},
                "Nick": {"template": "@{author.handle}"},
                "Missing": {"source": "nowhere"},
            },
        }
    )
    frame = pd.DataFrame(
        {"record_key": ["a", "b"], "handle": ["ann", None], "platform": ["x", None]}
    )
    frame["author.handle"] = ["ann", None]
    result = apply_spec(spec, frame)
    assert result.records == [
        {"Title": "ann on x", "Nick": "@ann", "Missing": None},
        {"Title": None, "Nick": None, "Missing": None},
    ]


# --- the engine is columnar: it equals a plain per-row reference ---------------------------

_NOISE = {"So", "Sk", "Sm", "Sc", "Cc", "Cf", "Co", "Cs", "Cn", "Me"}
_TRIM = (
    "".join(chr(c) for c in range(0x3100) if chr(c).isspace()) + "\u200b\u200c\u200d\u2060\ufeff"
)
_TABLE = {
    "x": "X",
    "twitter": "X",
    "mastodon": "Mastodon",
    "instagram": "Instagram",
    "facebook": "Facebook",
    "linkedin": "LinkedIn",
    "bluesky": "Bluesky",
}


def _ref_trim(value: str | None) -> str | None:
    """NUL never survives (it cannot reach a CRM), so it does not shield spaces from trim."""
    return None if value is None else value.replace("\x00", "").strip(_TRIM)


def _units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _ref_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = "".join(c for c in str(value) if c in "\n\t" or not (ord(c) < 32 or ord(c) == 127))
    return None if not text.strip() else text


def _ref_clean_name(value: str | None) -> str | None:
    if value is None:
        return None
    kept = "".join(
        c
        for c in value.replace("\x00", "")
        if c.isspace() or (unicodedata.category(c) not in _NOISE and not 0xFE00 <= ord(c) <= 0xFE0F)
    )
    name = " ".join(kept.split())
    letters = any(c.isalnum() and not c.isdecimal() and c != "_" for c in name)
    return name if letters else None


def _ref_fit(value: str | None, limit: int) -> tuple[str | None, int | None]:
    """(value cut to the limit, original length when cut)."""
    if value is None or _units(value) <= limit:
        return value, None
    cut = value[:limit]
    while _units(cut) > limit:
        cut = cut[: len(cut) - (_units(cut) - limit + 1) // 2]
    return cut, _units(value)


def reference_lead(row: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str], list[str]]:
    """The shipped lead spec, written row by row: (record or None, rejected, warned fields)."""
    rejected: list[str] = []
    warned: list[str] = []
    out: dict[str, Any] = {}
    pid = _ref_text(row["person_key"])
    if pid is None or _units(pid) > 80:
        rejected.append("Social_Profile_Id__c")
    out["Social_Profile_Id__c"] = pid
    words = (_ref_clean_name(row["display_name"]) or "").split()
    first = words[0] if len(words) > 1 else None
    last = " ".join(words[1:]) if len(words) > 1 else (words[0] if words else None)
    if last is None:
        last = row["handle"] if row["handle"] is not None else "Unknown"
    for name, value, limit in (("FirstName", first, 40), ("LastName", _ref_text(last), 80)):
        value, cut = _ref_fit(value, limit)
        if cut:
            warned.append(name)
        out[name] = value
    if out["LastName"] is None:
        rejected.append("LastName")
    out["Company"] = "[not provided]"
    email = (_ref_trim(row["email"]) or "").lower() or None
    email = _ref_text(email)
    if email is not None and not EMAIL.fullmatch(email):
        warned.append("Email")
        email = None
    out["Email"] = email
    out["LeadSource"] = "Social"
    platform = _ref_trim(row["platform"])
    if platform:
        platform = _TABLE.get(platform, _TABLE.get(platform.casefold()))
    out["Social_Platform__c"] = platform or None
    handle = _ref_text(_ref_trim(row["handle"]))
    if handle is not None and _units(handle) > 80:
        rejected.append("Social_Handle__c")
    out["Social_Handle__c"] = handle
    url = _ref_text(_ref_trim(row["profile_url"]))
    if url is not None and not WEB_URL.fullmatch(url):
        warned.append("Social_Profile_URL__c")
        url = None
    out["Social_Profile_URL__c"] = url
    city, cut = _ref_fit(_ref_text(_ref_trim(row["location"])), 40)
    if cut:
        warned.append("City")
    out["City"] = city
    out["Description"] = _ref_text(row["engagement_summary"])
    score = row["score"]
    out["Engagement_Score__c"] = None if score is None else float(np.round(score, 1))
    count = row["engagement_count"]
    out["Engagement_Count__c"] = None if count is None else float(count)
    stamp = row["last_engaged_at"]
    when = None
    if stamp is not None:
        try:
            parsed = datetime.fromisoformat(stamp).astimezone(UTC)
            when = parsed.strftime("%Y-%m-%dT%H:%M:%S.") + f"{parsed.microsecond // 1000:03d}+0000"
        except ValueError:
            warned.append("Last_Engaged_At__c")
    out["Last_Engaged_At__c"] = when
    ticket = _ref_text(row["helpdesk_ticket_url"])
    if ticket is not None and not WEB_URL.fullmatch(ticket):
        warned.append("Helpdesk_Ticket_URL__c")
        ticket = None
    out["Helpdesk_Ticket_URL__c"] = ticket
    return (None if rejected else out), rejected, warned


_NAME_POOL = [
    "Ann Smith",
    "José Núñez 🇪🇸",
    "山田 太郎",
    "محمد علي",
    "\u202bمحمد\u202c",
    "Иван Петров",
    "देवनागरी नाम",
    "🚀🚀",
    ".",
    "_",
    "Cher",
    "  Mary  Jane \t Watson ",
    "Zoë\u200b Ray",
    "A\x00B C",
    "👨\u200d👩\u200d👧",
    "Dr. O'Brien ✨",
    "",
    "   ",
]


def random_people(n: int, seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)

    def noise(length: int) -> str:
        alphabet = "abcXYZ éñ漢字ع\u200b\u00a0🚀🇪\x00\x07\n-._@/"
        return "".join(rnd.choice(alphabet) for _ in range(length))

    people = []
    for i in range(n):
        roll = rnd.random()
        people.append(
            person(
                record_key=f"row{i}",
                person_key=rnd.choice([f"x:{i}", f"x:{i}", f"mastodon:{i}", None, "k" * 81]),
                platform=rnd.choice(["x", "mastodon", " Bluesky ", "X", "myspace", None]),
                handle=rnd.choice([f"user{i}", "h" * rnd.randint(70, 90), None, noise(6)]),
                display_name=rnd.choice(_NAME_POOL)
                if roll < 0.7
                else rnd.choice([None, noise(12)]),
                location=rnd.choice(["Paris", "L" * 45, "🌍" * 21, None, " ", noise(30)]),
                profile_url=rnd.choice([f"https://x.com/user{i}", "not a url", None]),
                email=rnd.choice([None, f" User{i}@Example.COM ", "bad@", "", noise(8)]),
                score=rnd.choice([None, rnd.random() * 100, float(rnd.randint(0, 9))]),
                engagement_count=rnd.choice([None, rnd.randint(0, 500)]),
                last_engaged_at=rnd.choice(
                    [
                        "2026-11-20T10:00:00+00:00",
                        "2026-11-20T12:30:15.123456+02:00",
                        "2026-02-03T04:05:06-07:30",
                        "yesterday",
                        None,
                    ]
                ),
                engagement_summary=rnd.choice(["reply: hi\nhttps://x.com/b/status/1", noise(50)]),
                helpdesk_ticket_url=rnd.choice(
                    [None, None, f"https://acme.zendesk.com/agent/tickets/{i}", noise(20)]
                ),
            )
        )
    return people


def test_columnar_engine_equals_a_per_row_reference(lead_spec: MappingSpec) -> None:
    people = random_people(20_000, seed=7)
    result = apply_spec(lead_spec, pd.DataFrame(people), LEAD)
    expected_records, expected_keys, expected_rejected, expected_warned = [], [], [], []
    for row in people:
        record, rejected, warned = reference_lead(row)
        key = row["record_key"] or ""
        expected_rejected += [(key, name) for name in rejected]
        if record is not None:
            expected_records.append(record)
            expected_keys.append(key)
            expected_warned += [(key, name) for name in warned]
    assert result.keys == expected_keys
    assert len(result.records) == len(expected_records)
    for got, want in zip(result.records, expected_records, strict=True):
        assert got == want
    assert sorted((p.record_key, p.field) for p in result.rejected) == sorted(expected_rejected)
    assert sorted((w.record_key, w.field) for w in result.warnings) == sorted(expected_warned)


# --- property: never raises, always fits -----------------------------------------------------

_ANY_VALUE = st.one_of(
    st.none(),
    st.text(max_size=120),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.booleans(),
)
_COLUMNS = list(person().keys())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries({name: _ANY_VALUE for name in _COLUMNS}), max_size=8))
def test_apply_never_raises_and_every_text_fits(rows: list[dict[str, Any]]) -> None:
    spec = load_spec(SPEC_DIR / "lead.salesforce.yaml")
    for position, row in enumerate(rows):
        row["record_key"] = f"row{position}"  # the flow's keys are unique; values are arbitrary
    frame = pd.DataFrame(rows, columns=_COLUMNS)
    result = apply_spec(spec, frame, LEAD)
    json.dumps(result.records, allow_nan=False)
    json.dumps([p.payload for p in result.rejected], allow_nan=False)
    assert len(result.records) == len(result.keys) == len(result.frame)
    assert len(result.records) + len({p.record_key for p in result.rejected}) == len(rows)
    for record in result.records:
        for name, value in record.items():
            assert value is None or type(value) in (str, int, float, bool)
            limit = LEAD[name].length
            if isinstance(value, str) and limit:
                assert _units(value) <= limit, (name, value)
                assert value.strip() and "\x00" not in value


# --- the fast engine equals the per-row baseline (bench/baseline_mapping.py) -----------------


def _load_baseline() -> Any:
    """``bench/baseline_mapping.py``, the naive per-row mapping (bench is not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "baseline_mapping.py"
    module_spec = importlib.util.spec_from_file_location("bench_baseline_mapping", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


BASELINE = _load_baseline()

_HOSTILE_PIECES = [
    *"aBzé ßİΣς1_.@-'$+^",
    "  ",
    "\t",
    "\n",
    "\r",
    "\x00",
    "\x07",
    "\x1f",
    "\x7f",
    "\x85",
    "\xa0",
    "\u2028",
    "\u3000",
    "\u200b",
    "\u200d",
    "\ufeff",
    "\u202e",
    "\ufe0f",
    "🚀",
    "🇪",
    "👨\u200d💻",
    "𠀋",
    "𝓙",
    "𝟙",
    "\U000e0101",
    "\U0001f3fb",
    "\ud800",
    "\udfff",
    "\ud83d",
    "\ude80",  # lone surrogates; side by side they look like one emoji in UTF-16
    "ﷺ",
    "٣",
    "²",
    "漢",
    "한",  # UTF-8 starts with 0xED, as an encoded lone surrogate does
    "ع",
    "ा",
    "http://",
    "HTTPS://",
    "httpſ://",
    ".com",
    "x.io",
    "mastodon",
    "X",
    " Bluesky ",
    "2026-11-20T10:00:00+00:00",
    "2026-02-30T10:00:00+00:00",
    "2026-11-20",
    "+0000",
]


def hostile_frame(n: int, seed: int) -> pd.DataFrame:
    """Lead candidates whose text is glued from hostile pieces, typed as the flow types them."""
    rnd = random.Random(seed)

    def text(pieces: int) -> str | None:
        if rnd.random() < 0.15:
            return None
        return "".join(rnd.choice(_HOSTILE_PIECES) for _ in range(rnd.randint(0, pieces)))

    rows = []
    for i in range(n):
        rows.append(
            person(
                record_key=None if rnd.random() < 0.02 else f"row{i}",
                person_key=rnd.choice([f"x:{i}", None, "k" * 81, text(8), "🚀" * 41]),
                platform=rnd.choice([text(3), "x", "mastodon", " Bluesky ", "myspace"]),
                handle=rnd.choice([text(6), "h" * rnd.randint(70, 90)]),
                display_name=rnd.choice([text(10), *_NAME_POOL]),
                location=rnd.choice([text(12), "🌍" * rnd.randint(15, 25), "L" * 45]),
                profile_url=rnd.choice([text(4), f"https://x.com/u{i}"]),
                email=rnd.choice([text(5), f" U{i}@Example.COM "]),
                score=rnd.choice([None, rnd.random() * 100, float("inf"), 1e308, 2.675, -0.05]),
                engagement_count=rnd.choice([None, rnd.randint(0, 500)]),
                last_engaged_at=rnd.choice(
                    [
                        text(2),
                        None,
                        "2026-11-20T12:30:15.123456+02:00",
                        "2026-11-20T10:00:00.000+0000",
                        "2026-13-45T99:99:99.000+0000",
                        "9999-12-31T23:59:59+00:00",
                    ]
                ),
                engagement_summary=rnd.choice([text(30), text(300) or "", "x" * 33_000]),
            )
        )
    return pd.DataFrame(rows)


def _outcome(result: Any) -> tuple[Any, ...]:
    return (
        result.keys,
        result.records,
        [(p.record_key, p.field, p.reason, p.payload) for p in result.rejected],
        [(p.record_key, p.field, p.reason) for p in result.warnings],
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_engine_equals_the_per_row_baseline_on_hostile_rows(
    lead_spec: MappingSpec, seed: int
) -> None:
    frame = hostile_frame(2_000, seed)
    got = apply_spec(lead_spec, frame, LEAD)
    want = BASELINE.map_rows(lead_spec, frame, LEAD)
    assert got.rejected and got.warnings  # the rows are hostile enough to exercise both
    assert _outcome(got) == _outcome(want)
    json.dumps(got.records, allow_nan=False)
    assert list(got.frame.index) == got.keys


def test_engine_equals_the_per_row_baseline_without_metadata(lead_spec: MappingSpec) -> None:
    frame = hostile_frame(1_500, seed=4)
    assert _outcome(apply_spec(lead_spec, frame)) == _outcome(BASELINE.map_rows(lead_spec, frame))


def test_engine_equals_the_per_row_baseline_on_the_ticket_spec() -> None:
    spec = load_spec(SPEC_DIR / "ticket.zendesk.yaml")
    rnd = random.Random(5)
    frame = pd.DataFrame(
        {
            "record_key": [f"c{i}" for i in range(500)],
            "platform_name": [rnd.choice(["X", None]) for _ in range(500)],
            "channel_name": [rnd.choice(["DM", "mention"]) for _ in range(500)],
            "handle": [rnd.choice(["ann", None, "🚀", " "]) for _ in range(500)],
            "first_line": [rnd.choice(["help", None, "x" * 200, "\x00"]) for _ in range(500)],
            "priority": [rnd.choice(["low", "URGENT", "weird", None]) for _ in range(500)],
            "route": [rnd.choice(["support", "sales", None]) for _ in range(500)],
            "display_name": [rnd.choice([*_NAME_POOL, None]) for _ in range(500)],
        }
    )
    fields = {
        "subject": DestinationField("subject", "string", length=150, nillable=False),
        "priority": DestinationField(
            "priority", "picklist", restricted_picklist=True, picklist_values=("low", "normal")
        ),
        "type": DestinationField("type", "string"),
        "requester_name": DestinationField("requester_name", "string", length=20),
    }
    got = apply_spec(spec, frame, fields)
    assert _outcome(got) == _outcome(BASELINE.map_rows(spec, frame, fields))


_PIECE = st.sampled_from(_HOSTILE_PIECES)
_HOSTILE_TEXT = st.one_of(st.none(), st.lists(_PIECE, max_size=12).map("".join))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "display_name": _HOSTILE_TEXT,
                "handle": _HOSTILE_TEXT,
                "email": _HOSTILE_TEXT,
                "location": _HOSTILE_TEXT,
                "platform": _HOSTILE_TEXT,
                "profile_url": _HOSTILE_TEXT,
                "last_engaged_at": _HOSTILE_TEXT,
                "engagement_summary": _HOSTILE_TEXT,
            }
        ),
        min_size=1,
        max_size=25,
    )
)
def test_engine_equals_the_per_row_baseline_on_generated_rows(
    rows: list[dict[str, Any]],
) -> None:
    spec = load_spec(SPEC_DIR / "lead.salesforce.yaml")
    frame = pd.DataFrame(
        [person(person_key=f"x:{i}", **row) for i, row in enumerate(rows)], columns=_COLUMNS
    )
    for column in rows[0]:
        frame[column] = frame[column].astype("str")
    assert _outcome(apply_spec(spec, frame, LEAD)) == _outcome(BASELINE.map_rows(spec, frame, LEAD))


# --- pieces of the fast engine against their plain definitions -------------------------------


def test_vectorised_dates_print_like_numpy() -> None:
    rng = np.random.default_rng(3)
    micros = np.concatenate(
        [
            rng.integers(-(10**17), 10**17, 5_000),  # years about -1200 .. 5100
            rng.integers(-(2**62) // 2_000, 2**62 // 2_000, 500),  # far outside 0 .. 9999
            np.array([0, -1, 253_402_300_799_999_999, 253_402_300_800_000_000]),
        ]
    ).astype("datetime64[us]")
    stamps = pd.Series(micros).dt.tz_localize("UTC")
    for unit, suffix in (("ms", "+0000"), ("D", "")):
        expected = [text + suffix for text in np.datetime_as_string(micros, unit=unit).tolist()]
        assert format_datetime(stamps, unit=unit).tolist() == expected


def test_vectorised_names_equal_the_regex_passes() -> None:
    names = [*_NAME_POOL, "a\ud83d\ude80b c", "\ud800 Lee", "  ", "Ⅻ Ray", "𝓙𝓸𝓱𝓷 Doe"]
    joined = "\x00" + "\x00".join(name.replace("\x00", "") for name in names) + "\x00"
    assert text_module.clean_names(joined) is None  # two lone surrogates side by side
    names = [name for name in names if "\ud83d" not in name]
    joined = "\x00" + "\x00".join(name.replace("\x00", "") for name in names) + "\x00"
    found = text_module.clean_names(joined)
    assert found is not None
    cleaned, no_letter = found
    regex = text_module.name_noise().sub("", joined)
    regex = collapse_spaces(text_module.drop_astral_noise(regex))
    assert cleaned == regex
    expected = [BASELINE.clean_name(name) is None for name in names]
    assert no_letter.tolist() == expected


@pytest.mark.parametrize(
    "value", ["http://x", "HTTPS://x.io/a?b", "httpſ://x", "ftp://x", "https://", "http://a b", ""]
)
def test_joined_url_check_agrees_with_the_url_rule(value: str) -> None:
    invalid = _INVALID_WEB_URL.match("\x00" + value + "\x00") is not None
    assert invalid == (WEB_URL.fullmatch(value) is None)


_URL_PIECES = ["h", "H", "t", "T", "p", "P", "s", "S", "\u017f", ":", "/", "//", "?", "#", " ",
               "\u3000", "x", ".", "é", "🚀", "\x1c", "http", "https://", "HTTP://"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_URL_PIECES), max_size=8).map("".join), max_size=12))
def test_url_check_on_code_units_agrees_with_the_url_rule(values: list[str]) -> None:
    """The unit comparisons read past short values into the next one: never a false pass."""
    units = Units.of("\x00".join(["", *values, ""]))
    found = units.items_not_web_urls().tolist()
    assert found == [i for i, value in enumerate(values) if WEB_URL.fullmatch(value) is None]


def test_records_carry_any_field_name(lead_spec: MappingSpec) -> None:
    spec = parse_spec(
        {
            "object": "Lead",
            "fields": {
                'it\'s "odd"': {"source": "handle"},
                "x}{y": {"value": "k"},
                "class": {"source": "score"},
            },
        }
    )
    result = apply_spec(spec, frame_of(person()))
    assert result.records == [{'it\'s "odd"': "ann_dev", "x}{y": "k", "class": 7.25}]


def test_a_date_that_only_looks_right_is_dropped_in_any_batch(lead_spec: MappingSpec) -> None:
    fine = person(person_key="x:1")
    odd = person(person_key="x:2", last_engaged_at="2026-13-45T99:99:99.000+0000")
    for rows in ([fine, odd], [odd]):
        result = apply_spec(lead_spec, frame_of(*rows), LEAD)
        assert result.records[-1]["Last_Engaged_At__c"] is None
        assert [w.field for w in result.warnings] == ["Last_Engaged_At__c"]


def test_mapping_leaves_the_garbage_collector_as_it_found_it(lead_spec: MappingSpec) -> None:
    frame = frame_of(person())
    try:
        for enabled in (True, False):
            gc.enable() if enabled else gc.disable()
            apply_spec(lead_spec, frame, LEAD)
            assert gc.isenabled() is enabled
    finally:
        gc.enable()


def test_fields_with_few_distinct_values_map_like_the_baseline(lead_spec: MappingSpec) -> None:
    """Columns holding a few values are mapped once per value: rows must not notice."""
    rnd = random.Random(6)
    pool = [
        *_NAME_POOL,
        *("x", "mastodon", " Bluesky ", "myspace", None, "\x00", "a\x00b", "\ud800", "x\udfffy"),
        *(" U1@Example.COM ", "ann(at)example", "h" * 85, "L" * 45, "🌍" * 21, "\u3000"),
    ]
    frame = pd.DataFrame(
        [
            person(
                record_key=f"row{i}",
                person_key=f"x:{i}",
                **{
                    column: rnd.choice(pool)
                    for column in ("platform", "location", "email", "display_name", "handle")
                },
            )
            for i in range(3_000)
        ]
    )
    got = apply_spec(lead_spec, frame, LEAD)
    assert got.rejected and got.warnings
    assert _outcome(got) == _outcome(BASELINE.map_rows(lead_spec, frame, LEAD))


# --- found in review: one row must not change another's value; no batch-wide crash --------


def _one_field(field: dict[str, Any]) -> MappingSpec:
    return parse_spec({"object": "Lead", "fields": {"F": field}})


def test_a_nanosecond_date_does_not_void_the_dates_of_the_other_rows() -> None:
    """pandas parses a whole column in nanoseconds once one value has 9 fractional digits,
    where a date beyond 2262 does not fit: those rows are parsed again on their own."""
    spec = _one_field({"source": "r", "on_invalid": "reject"})
    frame = pd.DataFrame(
        {
            "record_key": ["a", "b", "c", "d"],
            "r": ["2300-01-01T00:00:00Z", "2026-11-20T10:00:00.123456789Z", None, "soon"],
        }
    )
    fields = {"F": DestinationField("F", "datetime")}
    got = apply_spec(spec, frame, fields)
    assert [r["F"] for r in got.records] == [
        "2300-01-01T00:00:00.000+0000",
        "2026-11-20T10:00:00.123+0000",
        None,
    ]
    assert [(p.record_key, p.field) for p in got.rejected] == [("d", "F")]
    assert _outcome(got) == _outcome(BASELINE.map_rows(spec, frame, fields))


def test_a_lone_surrogate_in_a_url_value_is_dropped_not_a_crash() -> None:
    spec = _one_field({"source": "handle", "transforms": [{"url": "https://x.com/{value}"}]})
    frame = pd.DataFrame({"record_key": ["a", "b"], "handle": ["ann", "bob\ud800 j"]})
    got = apply_spec(spec, frame)
    assert [r["F"] for r in got.records] == ["https://x.com/ann", "https://x.com/bob%20j"]
    assert _outcome(got) == _outcome(BASELINE.map_rows(spec, frame))


def test_a_missing_timestamp_is_no_number() -> None:
    stamps = pd.to_datetime(["2026-11-20T10:00Z", None], utc=True)
    frame = pd.DataFrame({"record_key": ["a", "b"], "t": stamps})
    got = apply_spec(_one_field({"source": "t"}), frame, {"F": DestinationField("F", "double")})
    assert got.records[1] == {"F": None} and not got.warnings


def test_a_required_value_that_is_no_number_is_rejected_once() -> None:
    spec = _one_field({"source": "v", "required": True, "on_invalid": "reject"})
    frame = pd.DataFrame({"record_key": ["a", "b", "c"], "v": ["high", "2", None]})
    got = apply_spec(spec, frame, {"F": DestinationField("F", "double")})
    assert got.records == [{"F": 2.0}]
    assert [(p.record_key, p.reason) for p in got.rejected] == [
        ("a", "value 'high' is not a number (policy: reject)"),
        ("c", "F is required but empty after mapping"),
    ]


def test_a_value_cut_to_nothing_but_blanks_is_no_value() -> None:
    spec = _one_field({"source": "v", "required": True})
    frame = pd.DataFrame({"record_key": ["a", "b", "c"], "v": ["🚀abc", "   \u3000x", "xy"]})
    fields = {"F": DestinationField("F", "string", length=1)}
    got = apply_spec(spec, frame, fields)
    assert got.records == [{"F": "x"}]
    assert [(p.record_key, p.reason) for p in got.rejected] == [
        ("a", "F is required but empty after mapping"),
        ("b", "F is required but empty after mapping"),
    ]
    assert _outcome(got) == _outcome(BASELINE.map_rows(spec, frame, fields))


def test_only_dates_salesforce_stores_are_dates() -> None:
    """'now' is no date of anything; 0001-01-01 or 9999-12-31 Salesforce refuses."""
    spec = _one_field({"source": "d", "transforms": ["to_datetime"]})
    values = ["now", "today", "0001-01-01", "1700-01-01", "4000-12-30T23:59:59Z", "9999-12-31"]
    frame = pd.DataFrame({"record_key": [f"r{i}" for i in range(6)], "d": values})
    fields = {"F": DestinationField("F", "datetime")}
    got = apply_spec(spec, frame, fields)
    assert [r["F"] for r in got.records] == [
        None,
        None,
        None,
        "1700-01-01T00:00:00.000+0000",
        "4000-12-30T23:59:59.000+0000",
        None,
    ]
    assert [w.record_key for w in got.warnings] == ["r0", "r1", "r2", "r5"]
    assert _outcome(got) == _outcome(BASELINE.map_rows(spec, frame, fields))


def test_a_timestamp_outside_the_crm_range_is_named_and_prints_as_text() -> None:
    frame = pd.DataFrame(
        {"record_key": ["a", "b"], "t": pd.to_datetime(["1690-01-01", "2026-01-01"])}
    )
    spec = _one_field({"source": "t"})
    as_date = apply_spec(spec, frame, {"F": DestinationField("F", "datetime")})
    assert as_date.records[0] == {"F": None}
    assert [w.reason for w in as_date.warnings] == [
        "value '1690-01-01T00:00:00.000+0000' is not an ISO 8601 date-time from 1700 to 4000 "
        "(dropped)"
    ]
    as_text = apply_spec(spec, frame, {"F": DestinationField("F", "string")})
    assert as_text.records[0] == {"F": "1690-01-01T00:00:00.000+0000"} and not as_text.warnings


def test_an_object_column_prints_each_value_as_its_own_type_would() -> None:
    """``verified`` with gaps is an object column of bools and None: it must read "true",
    not Python's "True", like a bool column; a whole float without ".0" (checked: before,
    str() gave "True" and "12345.0")."""
    from mappings.transforms import as_text

    mixed = pd.Series([True, None, False, 12345.0, float("nan"), 1.5, "x", 3], dtype=object)
    text = as_text(mixed)
    assert str(text.dtype) == "str"
    assert text.isna().tolist() == [False, True, False, False, True, False, False, False]
    assert text.dropna().tolist() == ["true", "false", "12345", "1.5", "x", "3"]
    assert as_text(pd.Series([True, False])).tolist() == ["true", "false"]
