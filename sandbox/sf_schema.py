"""Lead, Contact, Task, Campaign and CampaignMember metadata, Salesforce-style ids, and
per-field value checks.

The describe output is what a mapping validator reads, and the value checks produce the
per-record error codes and message texts the real org produces, so a sink's error handling
is exercised against the wire format it will meet in production.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sandbox.soql import parse_datetime


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    type: str
    length: int = 0
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    defaulted: bool = False
    external_id: bool = False
    unique: bool = False
    id_lookup: bool = False
    restricted: bool = False
    picklist: tuple[str, ...] = ()
    default: str | None = None
    reference_to: tuple[str, ...] = ()
    precision: int = 0
    scale: int = 0

    @property
    def custom(self) -> bool:
        return self.name.endswith("__c")

    @property
    def required(self) -> bool:
        """The documented rule: createable, not nillable, not defaulted, not boolean."""
        return (
            self.createable and not self.nillable and not self.defaulted and self.type != "boolean"
        )

    def describe(self) -> dict[str, Any]:
        soap = {
            "id": "tns:ID",
            "reference": "tns:ID",
            "boolean": "xsd:boolean",
            "double": "xsd:double",
            "datetime": "xsd:dateTime",
            "date": "xsd:date",
        }.get(self.type, "xsd:string")
        text_like = self.type not in ("boolean", "double", "datetime", "date")
        return {
            "aggregatable": self.type != "textarea",
            "aiPredictionField": False,
            "autoNumber": False,
            "byteLength": self.length * 3 if text_like else 0,
            "calculated": False,
            "calculatedFormula": None,
            "cascadeDelete": False,
            "caseSensitive": False,
            "compoundFieldName": "Name" if self.name in ("FirstName", "LastName") else None,
            "controllerName": None,
            "createable": self.createable,
            "custom": self.custom,
            "defaultValue": None,
            "defaultValueFormula": None,
            "defaultedOnCreate": self.defaulted,
            "dependentPicklist": False,
            "deprecatedAndHidden": False,
            "digits": 0,
            "displayLocationInDecimal": False,
            "encrypted": False,
            "externalId": self.external_id,
            "extraTypeInfo": None,
            "filterable": self.type != "textarea",
            "filteredLookupInfo": None,
            "formulaTreatNullNumberAsZero": False,
            "groupable": self.type not in ("textarea", "double", "datetime", "date"),
            "highScaleNumber": False,
            "htmlFormatted": False,
            "idLookup": self.id_lookup,
            "inlineHelpText": None,
            "label": self.label,
            "length": self.length if text_like else 0,
            "mask": None,
            "maskType": None,
            "name": self.name,
            "nameField": self.name == "Name",
            "namePointing": self.name == "OwnerId",
            "nillable": self.nillable,
            "permissionable": self.nillable and self.createable and self.custom,
            "picklistValues": [
                {
                    "active": True,
                    "defaultValue": value == self.default,
                    "label": value,
                    "validFor": None,
                    "value": value,
                }
                for value in self.picklist
            ],
            "polymorphicForeignKey": len(self.reference_to) > 1,
            "precision": self.precision,
            "queryByDistance": False,
            "referenceTargetField": None,
            "referenceTo": list(self.reference_to),
            "relationshipName": self.name[:-2] if self.type == "reference" else None,
            "relationshipOrder": None,
            "restrictedDelete": False,
            "restrictedPicklist": self.restricted,
            "scale": self.scale,
            "searchPrefilterable": False,
            "soapType": soap,
            "sortable": self.type != "textarea",
            "type": self.type,
            "unique": self.unique,
            "updateable": self.updateable,
            "writeRequiresMasterRead": False,
        }


def _system(name: str, label: str, kind: str, length: int = 0) -> Field:
    return Field(
        name,
        label,
        kind,
        length,
        nillable=False,
        createable=False,
        updateable=False,
        defaulted=True,
    )


LEAD_SOURCES = ("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other", "Social")
LEAD_STATUSES = (
    "Open - Not Contacted",
    "Working - Contacted",
    "Closed - Converted",
    "Closed - Not Converted",
)
STRING_TYPES = {
    "id",
    "string",
    "email",
    "phone",
    "url",
    "textarea",
    "picklist",
    "combobox",
    "reference",
}
PLATFORMS = ("X", "Mastodon", "Instagram", "Facebook", "LinkedIn", "Bluesky")
OWNER = Field(
    "OwnerId",
    "Owner ID",
    "reference",
    18,
    nillable=False,
    defaulted=True,
    reference_to=("Group", "User"),
)
SOCIAL_ID = Field(
    "Social_Profile_Id__c",
    "Social Profile Id",
    "string",
    80,
    external_id=True,
    unique=True,
    id_lookup=True,
)
SOCIAL_HANDLE = Field("Social_Handle__c", "Social Handle", "string", 80)
SOCIAL_URL = Field("Social_Profile_URL__c", "Social Profile URL", "url", 255)
TASK_STATUSES = ("Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred")


def _id_field(label: str) -> Field:
    return Field(
        "Id",
        label,
        "id",
        18,
        nillable=False,
        createable=False,
        updateable=False,
        defaulted=True,
        id_lookup=True,
    )


COMMON_HEAD = (
    _id_field("Lead ID"),
    _system("IsDeleted", "Deleted", "boolean"),
    Field("Name", "Full Name", "string", 121, createable=False, updateable=False),
)
COMMON_TAIL = (
    _system("CreatedDate", "Created Date", "datetime"),
    _system("LastModifiedDate", "Last Modified Date", "datetime"),
)

SCHEMAS: dict[str, tuple[str, str, tuple[Field, ...]]] = {
    "Lead": (
        "00Q",
        "Leads",
        (
            *COMMON_HEAD,
            Field("FirstName", "First Name", "string", 40),
            Field("LastName", "Last Name", "string", 80, nillable=False),
            Field("Company", "Company", "string", 255, nillable=False),
            Field("Title", "Title", "string", 128),
            Field("Email", "Email", "email", 80, id_lookup=True),
            Field("Phone", "Phone", "phone", 40),
            Field("City", "City", "string", 40),
            Field("Country", "Country", "string", 80),
            Field("Website", "Website", "url", 255),
            Field("Description", "Description", "textarea", 32000),
            Field("LeadSource", "Lead Source", "picklist", 255, picklist=LEAD_SOURCES),
            Field(
                "Status",
                "Status",
                "picklist",
                255,
                nillable=False,
                defaulted=True,
                restricted=True,
                picklist=LEAD_STATUSES,
                default=LEAD_STATUSES[0],
            ),
            Field("Rating", "Rating", "picklist", 255, picklist=("Hot", "Warm", "Cold")),
            OWNER,
            Field(
                "IsConverted",
                "Converted",
                "boolean",
                nillable=False,
                createable=False,
                updateable=False,
                defaulted=True,
            ),
            Field(
                "ConvertedContactId",
                "Converted Contact ID",
                "reference",
                18,
                createable=False,
                updateable=False,
                reference_to=("Contact",),
            ),
            *COMMON_TAIL,
            SOCIAL_ID,
            SOCIAL_HANDLE,
            SOCIAL_URL,
            Field(
                "Social_Platform__c",
                "Social Platform",
                "picklist",
                255,
                restricted=True,
                picklist=PLATFORMS,
            ),
            Field("Engagement_Score__c", "Engagement Score", "double", precision=18, scale=2),
            Field("Engagement_Count__c", "Engagement Count", "double", precision=18, scale=0),
            Field("Last_Engaged_At__c", "Last Engaged At", "datetime"),
            Field("Helpdesk_Ticket_URL__c", "Helpdesk Ticket URL", "url", 255),
        ),
    ),
    "Contact": (
        "003",
        "Contacts",
        (
            _id_field("Contact ID"),
            *COMMON_HEAD[1:],
            Field("FirstName", "First Name", "string", 40),
            Field("LastName", "Last Name", "string", 80, nillable=False),
            Field("Email", "Email", "email", 80, id_lookup=True),
            Field("AccountId", "Account ID", "reference", 18, reference_to=("Account",)),
            OWNER,
            *COMMON_TAIL,
            SOCIAL_ID,
            SOCIAL_HANDLE,
            SOCIAL_URL,
        ),
    ),
    "Task": (
        "00T",
        "Tasks",
        (
            _id_field("Activity ID"),
            _system("IsDeleted", "Deleted", "boolean"),
            Field("Subject", "Subject", "combobox", 255),
            Field("ActivityDate", "Due Date Only", "date"),
            Field(
                "Status",
                "Status",
                "picklist",
                255,
                nillable=False,
                defaulted=True,
                restricted=True,
                picklist=TASK_STATUSES,
                default=TASK_STATUSES[0],
            ),
            Field(
                "Priority",
                "Priority",
                "picklist",
                255,
                nillable=False,
                defaulted=True,
                restricted=True,
                picklist=("High", "Normal", "Low"),
                default="Normal",
            ),
            _system("IsClosed", "Closed", "boolean"),
            Field("WhoId", "Name ID", "reference", 18, reference_to=("Contact", "Lead")),
            Field(
                "WhatId",
                "Related To ID",
                "reference",
                18,
                reference_to=("Account", "Campaign", "Case", "Opportunity"),
            ),
            Field("Type", "Type", "picklist", 255, picklist=("Call", "Email", "Meeting", "Other")),
            Field(
                "TaskSubtype",
                "Task Subtype",
                "picklist",
                255,
                updateable=False,
                restricted=True,
                picklist=("Task", "Email", "ListEmail", "Cadence", "Call", "LinkedIn"),
            ),
            Field("Description", "Comments", "textarea", 32000),
            OWNER,
            *COMMON_TAIL,
            Field(
                "Socialcrm_Key__c",
                "Socialcrm Key",
                "string",
                255,
                external_id=True,
                unique=True,
                id_lookup=True,
            ),
            Field("Helpdesk_Ticket_URL__c", "Helpdesk Ticket URL", "url", 255),
        ),
    ),
    "Campaign": (
        "701",
        "Campaigns",
        (
            _id_field("Campaign ID"),
            _system("IsDeleted", "Deleted", "boolean"),
            Field("Name", "Name", "string", 80, nillable=False),
            Field("IsActive", "Active", "boolean", nillable=False, defaulted=True),
            Field(
                "Status",
                "Status",
                "picklist",
                255,
                picklist=("Planned", "In Progress", "Completed", "Aborted"),
            ),
            Field(
                "Type",
                "Type",
                "picklist",
                255,
                picklist=("Conference", "Webinar", "Advertisement", "Email", "Social", "Other"),
            ),
            Field("Description", "Description", "textarea", 32000),
            OWNER,
            *COMMON_TAIL,
        ),
    ),
    "CampaignMember": (
        "00v",
        "Campaign Members",
        (
            _id_field("Campaign Member ID"),
            _system("IsDeleted", "Deleted", "boolean"),
            Field(
                "CampaignId",
                "Campaign ID",
                "reference",
                18,
                nillable=False,
                updateable=False,
                reference_to=("Campaign",),
            ),
            Field("LeadId", "Lead ID", "reference", 18, updateable=False, reference_to=("Lead",)),
            Field(
                "ContactId",
                "Contact ID",
                "reference",
                18,
                updateable=False,
                reference_to=("Contact",),
            ),
            Field(
                "Status",
                "Status",
                "picklist",
                40,
                defaulted=True,
                picklist=("Sent", "Responded"),
                default="Sent",
            ),
            _system("HasResponded", "Responded", "boolean"),
            *COMMON_TAIL,
        ),
    ),
}
# Objects whose records Lead assignment rules (``Sforce-Auto-Assign``) may give an owner.
ASSIGNABLE = ("Lead",)


@dataclass
class SObject:
    name: str
    key_prefix: str
    label_plural: str
    fields: list[Field]
    by_lower: dict[str, Field] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_lower = {f.name.lower(): f for f in self.fields}

    def field(self, name: str) -> Field | None:
        """Field names are case-insensitive in Salesforce; this returns the canonical one."""
        return self.by_lower.get(name.lower())

    def describe(self, version: str) -> dict[str, Any]:
        base = f"/services/data/v{version}/sobjects/{self.name}"
        return {
            "actionOverrides": [],
            "activateable": False,
            "childRelationships": [],
            "compactLayoutQueryable": True,
            "createable": True,
            "custom": False,
            "customSetting": False,
            "deletable": True,
            "deprecatedAndHidden": False,
            "feedEnabled": True,
            "fields": [f.describe() for f in self.fields],
            "hasSubtypes": False,
            "isInterface": False,
            "isSubtype": False,
            "keyPrefix": self.key_prefix,
            "label": self.name,
            "labelPlural": self.label_plural,
            "layoutable": True,
            "mergeable": True,
            "mruEnabled": True,
            "name": self.name,
            "namedLayoutInfos": [],
            "networkScopeFieldName": None,
            "queryable": True,
            "recordTypeInfos": [
                {
                    "active": True,
                    "available": True,
                    "defaultRecordTypeMapping": True,
                    "developerName": "Master",
                    "master": True,
                    "name": "Master",
                    "recordTypeId": "012000000000000AAA",
                    "urls": {"layout": f"{base}/describe/layouts/012000000000000AAA"},
                }
            ],
            "replicateable": True,
            "retrieveable": True,
            "searchable": True,
            "supportedScopes": [
                {"label": "All " + self.label_plural.lower(), "name": "everything"},
                {"label": "My " + self.label_plural.lower(), "name": "mine"},
            ],
            "triggerable": True,
            "undeletable": True,
            "updateable": True,
            "urls": {
                "compactLayouts": f"{base}/describe/compactLayouts",
                "rowTemplate": f"{base}/{{ID}}",
                "approvalLayouts": f"{base}/describe/approvalLayouts",
                "describe": f"{base}/describe",
                "quickActions": f"{base}/quickActions",
                "layouts": f"{base}/describe/layouts",
                "sobject": base,
            },
        }


OBJECTS = {
    name: SObject(name, prefix, plural, list(fs)) for name, (prefix, plural, fs) in SCHEMAS.items()
}


def find_object(name: str) -> SObject | None:
    for obj in OBJECTS.values():
        if obj.name.lower() == name.lower():
            return obj
    return None


# Key prefixes of standard objects the sandbox does not simulate (references to them are
# accepted unchecked, but only where a field may point to that object).
OTHER_PREFIXES = {
    "001": "Account",
    "005": "User",
    "00G": "Group",
    "006": "Opportunity",
    "500": "Case",
}


def object_for_id(record_id: str) -> SObject | None:
    """The object an id belongs to, by its three-character key prefix."""
    for obj in OBJECTS.values():
        if record_id.startswith(obj.key_prefix):
            return obj
    return None


_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")


def is_id(text: str) -> bool:
    """Looks like a record id (15 or 18 alphanumerics); says nothing of its existence."""
    return bool(_ID.match(text))


def sf_id(prefix: str, counter: int) -> str:
    """An 18-character id: 15 case-sensitive characters plus the case-folding checksum."""
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    digits = ""
    for _ in range(5):
        counter, rem = divmod(counter, 62)
        digits = alphabet[rem] + digits
    base = f"{prefix}5g00000{digits}"
    suffix = ""
    for chunk in (base[0:5], base[5:10], base[10:15]):
        bits = sum(1 << i for i, ch in enumerate(chunk) if ch.isupper())
        suffix += "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"[bits]
    return base + suffix


def record_error(code: str, message: str, fields: list[str]) -> dict[str, Any]:
    return {"statusCode": code, "message": message, "fields": fields}


_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def check_value(f: Field, value: Any) -> tuple[Any, dict[str, Any] | None]:
    """Coerce one incoming value the way the API does, or say why it is refused."""
    if value is None:
        return None, None
    bad_type = record_error(
        "INVALID_TYPE_ON_FIELD_IN_RECORD",
        f"{f.label}: value not of required type: {value}",
        [f.name],
    )
    if f.type == "boolean":
        return (value, None) if isinstance(value, bool) else (None, bad_type)
    if f.type == "double":
        if isinstance(value, bool):
            return None, bad_type
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None, bad_type
        return (number, None) if math.isfinite(number) else (None, bad_type)
    if f.type == "datetime":
        normalized = parse_datetime(value) if isinstance(value, str) else None
        return (normalized, None) if normalized else (None, bad_type)
    if f.type == "date":
        if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d\d-\d\d", value.strip()):
            return None, bad_type
        try:
            return date.fromisoformat(value.strip()).isoformat(), None
        except ValueError:
            return None, bad_type
    if isinstance(value, dict | list):
        return None, bad_type
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if f.type == "picklist" and f.restricted and text not in f.picklist:
        return None, record_error(
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            f"{f.label}: bad value for restricted picklist field: {text}",
            [f.name],
        )
    if f.length and len(text) > f.length:
        return None, record_error(
            "STRING_TOO_LONG",
            f"{f.label}: data value too large: {text} (max length={f.length})",
            [f.name],
        )
    if f.type == "email" and text and not _EMAIL.match(text):
        return None, record_error(
            "INVALID_EMAIL_ADDRESS", f"{f.label}: invalid email address: {text}", [f.name]
        )
    return text, None
