"""X API v2 wire details: parameter names and checks, error bodies, pagination tokens.

Kept apart from the endpoint logic so the simulator reads as "what each endpoint returns".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sandbox.wire import Request, Response, json_response

BEARER = "sandbox-x-bearer"
PROBLEM = "application/problem+json"
MENTIONS_REACHABLE = 800  # X only serves the ~800 most recent mentions

TWEET_FIELDS = [
    "attachments",
    "author_id",
    "card_uri",
    "context_annotations",
    "conversation_id",
    "created_at",
    "edit_controls",
    "edit_history_tweet_ids",
    "entities",
    "geo",
    "id",
    "in_reply_to_user_id",
    "lang",
    "non_public_metrics",
    "note_tweet",
    "organic_metrics",
    "possibly_sensitive",
    "promoted_metrics",
    "public_metrics",
    "referenced_tweets",
    "reply_settings",
    "source",
    "text",
    "withheld",
]
USER_FIELDS = [
    "affiliation",
    "connection_status",
    "created_at",
    "description",
    "entities",
    "id",
    "location",
    "most_recent_tweet_id",
    "name",
    "pinned_tweet_id",
    "profile_banner_url",
    "profile_image_url",
    "protected",
    "public_metrics",
    "receives_your_dm",
    "subscription_type",
    "url",
    "username",
    "verified",
    "verified_type",
    "withheld",
]
TWEET_EXPANSIONS = [
    "attachments.poll_ids",
    "attachments.media_keys",
    "author_id",
    "edit_history_tweet_ids",
    "entities.mentions.username",
    "geo.place_id",
    "in_reply_to_user_id",
    "referenced_tweets.id",
    "referenced_tweets.id.author_id",
]
USER_EXPANSIONS = ["pinned_tweet_id", "affiliation.user_id", "most_recent_tweet_id"]
OTHER_FIELDS = ("media.fields", "place.fields", "poll.fields")
TWEET_DEFAULTS = ("id", "text", "edit_history_tweet_ids")
USER_DEFAULTS = ("id", "name", "username")


class XError(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def problem(status: int, title: str, headers: dict[str, str] | None = None) -> Response:
    body = {"title": title, "type": "about:blank", "status": status, "detail": title}
    return json_response(status, body, content_type=PROBLEM, headers=headers)


def invalid(param: str, value: str, message: str) -> XError:
    body = {
        "errors": [{"parameters": {param: [value]}, "message": message}],
        "title": "Invalid Request",
        "detail": "One or more parameters to your request was invalid.",
        "type": "https://api.twitter.com/2/problems/invalid-request",
    }
    return XError(json_response(400, body))


def not_found(kind: str, value: str, parameter: str = "id") -> dict[str, Any]:
    return {
        "value": value,
        "detail": f"Could not find {kind} with {parameter}: [{value}].",
        "title": "Not Found Error",
        "resource_type": kind,
        "parameter": parameter,
        "resource_id": value,
        "type": "https://api.twitter.com/2/problems/resource-not-found",
    }


# Opaque pagination tokens: integers in base 35 joined by "z". Stateless, so a token stays
# valid across restarts of the same world, and it names a position, not an offset, so new
# items arriving between pages never repeat or skip one.
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxy"


def encode_token(*parts: int) -> str:
    def b35(n: int) -> str:
        out = ""
        while True:
            n, r = divmod(n, 35)
            out = _DIGITS[r] + out
            if n == 0:
                return out

    return "z".join(b35(p) for p in parts)


def decode_token(token: str, n: int) -> list[int]:
    parts = token.split("z")
    if len(parts) != n or not all(parts) or any(c not in _DIGITS for p in parts for c in p):
        raise invalid(
            "pagination_token",
            token,
            f"The `pagination_token` query parameter value [{token}] is not valid",
        )
    return [int(p, 35) for p in parts]


def check_params(req: Request, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    for name, values in req.query.items():
        if name not in allowed:
            raise invalid(
                name,
                values[-1],
                f"The query parameter [{name}] is not one of [{','.join(allowed)}]",
            )


def list_param(req: Request, name: str, choices: list[str]) -> list[str]:
    raw = req.param(name)
    if raw is None:
        return []
    items = [item for item in raw.split(",") if item]
    for item in items:
        if item not in choices:
            raise invalid(
                name,
                item,
                f"The `{name}` query parameter value [{item}] is not one of [{','.join(choices)}]",
            )
    return items


def max_results(req: Request, low: int, high: int, default: int) -> int:
    raw = req.param("max_results")
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise invalid(
            "max_results",
            raw,
            f"The `max_results` query parameter value [{raw}] is not between {low} and {high}",
        )
    return int(raw)


def id_param(req: Request, name: str) -> int | None:
    raw = req.param(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise invalid(name, raw, f"The `{name}` query parameter value [{raw}] is not valid")
    return int(raw)
