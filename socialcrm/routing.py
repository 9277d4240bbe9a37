"""Routing rules: does a message go to support, to sales, to the bin, or elsewhere?

Rules live in YAML (``mappings/routing.yaml`` ships English and French). They are tried
in order and the first match wins. Matching is case- and accent-insensitive: text and
keywords are both folded (``Démo`` matches ``demo``), keywords match whole words or
phrases, regular expressions run on the folded text.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Route = Literal["support", "sales", "spam", "other"]
Channel = Literal["dm", "mention"]
Priority = Literal["low", "normal", "high", "urgent"]
ALL_CHANNELS: tuple[Channel, ...] = ("dm", "mention")


class RoutingError(ValueError):
    """A broken rules file; the message names the file and the rule."""


def fold(text: str) -> str:
    """Lowercase, strip accents, unify apostrophes and spaces: what matching sees."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    stripped = stripped.replace("’", "'").replace("ʼ", "'")
    return " ".join(stripped.split())


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    route: Route
    keywords: list[str] = Field(default_factory=list)
    regex: list[str] = Field(default_factory=list)
    channels: list[Channel] = Field(default_factory=lambda: list(ALL_CHANNELS))
    priority: Priority = "normal"
    tags: list[str] = Field(default_factory=list)
    # A message this rule matches by a keyword alone goes to a later rule of these routes
    # if one matches it too: spam words in a genuine support request ("hello dear, my
    # account was hacked"). A regex hit (a link shortener, "claim your prize") never
    # yields: phishing speaks of urgency and locked accounts too.
    yield_to: list[Route] = Field(default_factory=list)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"regex {pattern!r} does not compile: {exc}") from None
        return patterns

    @cached_property
    def pattern(self) -> re.Pattern[str] | None:
        parts = [rf"(?<!\w){re.escape(fold(k))}(?!\w)" for k in self.keywords if k.strip()]
        parts += [f"(?:{p})" for p in self.regex]
        return re.compile("|".join(parts)) if parts else None

    @cached_property
    def regex_pattern(self) -> re.Pattern[str] | None:
        return re.compile("|".join(f"(?:{p})" for p in self.regex)) if self.regex else None


class RoutingRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule]
    default_route: Route = "other"
    default_priority: Priority = "normal"


@dataclass(frozen=True, slots=True)
class Decision:
    route: Route
    rule: str | None
    priority: Priority
    tags: tuple[str, ...] = ()


def load_rules(path: str | Path) -> RoutingRules:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return RoutingRules.model_validate(data)
    except FileNotFoundError:
        raise RoutingError(f"{path}: routing rules not found") from None
    except yaml.YAMLError as exc:
        raise RoutingError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        lines = [f"{path}: invalid routing rules"]
        for error in exc.errors():
            loc = list(error["loc"])
            if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
                names = (data or {}).get("rules") or []
                name = names[loc[1]].get("name") if loc[1] < len(names) else None
                loc[1] = f"{loc[1]} ({name})" if name else loc[1]
            lines.append(f"  {'.'.join(str(p) for p in loc)}: {error['msg']}")
        raise RoutingError("\n".join(lines)) from None


def route(rules: RoutingRules, text: str | None, channel: Channel = "dm") -> Decision:
    """The first rule that matches; the default route when none does.

    A message with no text (an attachment alone) takes the default route, so no
    customer message is ever dropped for lack of words.
    """
    folded = fold(text or "")
    if folded:
        applicable = [
            rule for rule in rules.rules if channel in rule.channels and rule.pattern is not None
        ]
        for at, rule in enumerate(applicable):
            assert rule.pattern is not None
            if not rule.pattern.search(folded):
                continue
            chosen = rule
            strong = rule.regex_pattern is not None and rule.regex_pattern.search(folded)
            if rule.yield_to and not strong:
                chosen = next(
                    (
                        later
                        for later in applicable[at + 1 :]
                        if later.route in rule.yield_to
                        and later.pattern is not None
                        and later.pattern.search(folded)
                    ),
                    rule,
                )
            return Decision(chosen.route, chosen.name, chosen.priority, tuple(chosen.tags))
    return Decision(rules.default_route, None, rules.default_priority)
