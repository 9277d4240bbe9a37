"""Zendesk record shapes: how a user, a ticket and a comment look on the wire.

Field lists follow the recordings (``recordings/zendesk/user_create_or_update_201.json``)
and api-reference 6.2; ids are integers, timestamps whole seconds in UTC with a ``Z``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

STATUSES = ("new", "open", "pending", "hold", "solved", "closed")
# The name Zendesk gives a permanently deleted user (GET /api/v2/deleted_users docs).
PERMANENTLY_DELETED = "Permanently Deleted User"
REDACTED = "\u2587"  # what a redacted character becomes in a comment
API_VIA = {"channel": "api", "source": {"from": {}, "to": {}, "rel": None}}


def zd_time(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class User:
    id: int
    name: str
    email: str | None
    external_id: str | None
    role: str
    created: float
    updated: float
    phone: str | None = None
    locale: str = "en-US"
    tags: list[str] = field(default_factory=list)
    # Deleting a user only deactivates it (a "soft delete"); permanent deletion then
    # scrubs its personal data, keeping the id that old tickets still point to.
    active: bool = True
    permanently_deleted: bool = False
    deleted: float | None = None

    def scrub(self, now: float) -> None:
        """What permanent deletion leaves of a user: an id and a placeholder name."""
        self.name = PERMANENTLY_DELETED
        self.email = self.external_id = self.phone = None
        self.tags = []
        self.permanently_deleted = True
        self.updated = now

    def payload(self, base_url: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": f"{base_url}/api/v2/users/{self.id}.json",
            "name": self.name,
            "email": self.email,
            "created_at": zd_time(self.created),
            "updated_at": zd_time(self.updated),
            "time_zone": "UTC",
            "iana_time_zone": "Etc/UTC",
            "phone": self.phone,
            "shared_phone_number": None,
            "photo": None,
            "locale_id": 1,
            "locale": self.locale,
            "organization_id": None,
            "role": self.role,
            "verified": self.role != "end-user",
            "external_id": self.external_id,
            "tags": list(self.tags),
            "alias": None,
            "active": self.active,
            "shared": False,
            "shared_agent": False,
            "last_login_at": None,
            "two_factor_auth_enabled": False,
            "signature": None,
            "details": None,
            "notes": None,
            "role_type": None,
            "custom_role_id": None,
            "moderator": self.role != "end-user",
            "ticket_restriction": "requested" if self.role == "end-user" else None,
            "only_private_comments": False,
            "restricted_agent": self.role == "end-user",
            "suspended": False,
            "default_group_id": None,
            "report_csv": False,
            "user_fields": {},
        }


@dataclass
class Comment:
    id: int
    body: str
    public: bool
    author_id: int
    audit_id: int
    created: float

    def payload(self) -> dict[str, Any]:
        paragraphs = html.escape(self.body).replace("\n", "<br>")
        return {
            "id": self.id,
            "type": "Comment",
            "author_id": self.author_id,
            "body": self.body,
            "html_body": f'<div class="zd-comment" dir="auto"><p>{paragraphs}</p></div>',
            "plain_body": self.body,
            "public": self.public,
            "attachments": [],
            "audit_id": self.audit_id,
            "via": API_VIA,
            "created_at": zd_time(self.created),
            "metadata": {"system": {"client": "sandbox", "ip_address": "127.0.0.1"}, "custom": {}},
        }


@dataclass
class Ticket:
    id: int
    subject: str
    description: str
    status: str
    priority: str | None
    type: str | None
    requester_id: int
    submitter_id: int
    external_id: str | None
    tags: list[str]
    custom_fields: dict[int, Any]
    created: float
    updated: float
    comments: list[Comment] = field(default_factory=list)

    def payload(self, base_url: str) -> dict[str, Any]:
        fields = [{"id": k, "value": v} for k, v in self.custom_fields.items()]
        return {
            "url": f"{base_url}/api/v2/tickets/{self.id}.json",
            "id": self.id,
            "external_id": self.external_id,
            "via": API_VIA,
            "created_at": zd_time(self.created),
            "updated_at": zd_time(self.updated),
            "generated_timestamp": int(self.updated),
            "type": self.type,
            "subject": self.subject,
            "raw_subject": self.subject,
            "description": self.description,
            "priority": self.priority,
            "status": self.status,
            "recipient": None,
            "requester_id": self.requester_id,
            "submitter_id": self.submitter_id,
            "assignee_id": None,
            "organization_id": None,
            "group_id": None,
            "collaborator_ids": [],
            "follower_ids": [],
            "email_cc_ids": [],
            "forum_topic_id": None,
            "problem_id": None,
            "has_incidents": False,
            "is_public": any(c.public for c in self.comments),
            "due_at": None,
            "tags": list(self.tags),
            "custom_fields": fields,
            "satisfaction_rating": None,
            "sharing_agreement_ids": [],
            "custom_status_id": STATUSES.index(self.status) + 1,
            "fields": fields,
            "followup_ids": [],
            "ticket_form_id": None,
            "brand_id": 360000000001,
            "allow_channelback": False,
            "allow_attachments": True,
            "from_messaging_channel": False,
        }
