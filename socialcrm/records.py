"""Normalized records: the shared language between sources, rules, mappings and sinks.

Sources turn platform payloads into these; nothing downstream ever sees a platform's JSON.
The identity of a person is ``"{platform}:{user_id}"``: handles change, ids do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar


class EngagementKind(StrEnum):
    MENTION = "mention"
    REPLY = "reply"
    QUOTE = "quote"
    REPOST = "repost"
    LIKE = "like"
    FOLLOW = "follow"
    COMMENT = "comment"
    MESSAGE = "message"  # a direct message routed to sales


def person_key(platform: str, user_id: str) -> str:
    """The identity key used as CRM external id and helpdesk requester id."""
    return f"{platform}:{user_id}"


@dataclass(frozen=True, slots=True)
class SocialProfile:
    platform: str
    user_id: str
    handle: str
    display_name: str | None = None
    bio: str | None = None
    location: str | None = None
    profile_url: str | None = None
    followers: int | None = None
    following: int | None = None
    posts: int | None = None
    verified: bool | None = None
    email: str | None = None
    created_at: datetime | None = None
    default_profile_image: bool | None = None

    @property
    def key(self) -> str:
        return person_key(self.platform, self.user_id)


@dataclass(frozen=True, slots=True)
class Engagement:
    """One act of a person towards the brand: a mention, a like of a brand post, ...

    ``id`` is unique per platform and kind. Likes and reposts have no id of their own on
    most platforms, so their id is ``"{post_id}:{user_id}"``; ``occurred_at`` is then the
    time we first saw them.
    """

    platform: str
    id: str
    kind: EngagementKind
    author: SocialProfile
    occurred_at: datetime | None = None
    post_id: str | None = None
    text: str | None = None
    url: str | None = None

    @property
    def key(self) -> str:
        return f"{self.platform}:{self.kind.value}:{self.id}"


@dataclass(frozen=True, slots=True)
class DirectMessage:
    platform: str
    message_id: str
    conversation_id: str
    sender: SocialProfile
    text: str
    sent_at: datetime | None = None
    from_brand: bool = False
    attachments: tuple[str, ...] = ()
    channel: str = "dm"  # or "mention": a public post routed to the helpdesk

    @property
    def key(self) -> str:
        return f"{self.platform}:{self.channel}:{self.message_id}"

    @property
    def conversation_key(self) -> str:
        return f"{self.platform}:conversation:{self.conversation_id}"


@dataclass(frozen=True, slots=True)
class RecordProblem:
    """Why one record could not go further; becomes a dead letter.

    Carries the record key and the field so that an operator knows what to fix.
    """

    record_key: str
    stage: str
    system: str
    reason: str
    field: str | None = None
    payload: dict[str, Any] | None = None

    def describe(self) -> str:
        where = f" field {self.field}" if self.field else ""
        return f"{self.record_key}{where}: {self.reason}"


T = TypeVar("T")


@dataclass(slots=True)
class Page(Generic[T]):
    """One page of a source: its records, the cursor to resume from, per-item problems."""

    records: list[T]
    next_token: str | None = None
    cursor: str | None = None
    problems: list[RecordProblem] = field(default_factory=list)
    warnings: list[RecordProblem] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DestinationField:
    """A destination field as its metadata describes it (Salesforce ``describe``, ...).

    The mapping engine validates specs against these without knowing any HTTP.
    """

    name: str
    type: str
    label: str = ""
    length: int | None = None
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    defaulted_on_create: bool = False
    external_id: bool = False
    restricted_picklist: bool = False
    picklist_values: tuple[str, ...] = ()

    @property
    def required_on_create(self) -> bool:
        return (
            self.createable
            and not self.nillable
            and not self.defaulted_on_create
            and self.type != "boolean"
        )


@dataclass(slots=True)
class SinkOutcome:
    """What a sink did with one record: ``created``, ``updated``, ``unchanged`` or ``failed``."""

    record_key: str
    status: str
    destination_id: str | None = None
    payload_hash: str | None = None
    problems: list[RecordProblem] = field(default_factory=list)
    retryable: bool = False  # a transient failure: try again on the next run by itself
