"""One YAML file configures everything; secrets appear in it only by reference.

A secret is written ``${ENV_VAR}`` (optionally ``${ENV_VAR:-fallback}``, meant for the
sandbox) or ``prefect-secret:BLOCK_NAME``. It is resolved at the moment of use into a
``SecretStr`` so that it never prints, logs or lands in an artifact.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, cast
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from socialcrm.records import EngagementKind

_ENV_REF = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}$")
_BLOCK_REF = re.compile(r"^prefect-secret:(?P<name>[a-z0-9][a-z0-9-]*)$")

SHIPPED_MAPPINGS = Path(__file__).resolve().parent.parent / "mappings"


class ConfigError(ValueError):
    """A configuration problem, worded for the person who edits the file."""


def _check_secret_ref(value: str) -> str:
    if _ENV_REF.match(value) or _BLOCK_REF.match(value):
        return value
    raise ValueError(
        "a secret must be a reference: ${ENV_VAR} or prefect-secret:block-name, "
        "never the secret itself"
    )


SecretRef = Annotated[str, AfterValidator(_check_secret_ref)]


def _check_web_url(value: str) -> str:
    if "${" in value:
        raise ValueError("only secrets take ${ENV_VAR} references: write the URL itself")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("expected a web address such as https://host.example.com")
    return value


WebUrl = Annotated[str, AfterValidator(_check_web_url)]


def resolve_secret(ref: str, *, what: str) -> SecretStr:
    """Turn a secret reference into its value, at the moment of use.

    Args:
        ref: ``${ENV_VAR}``, ``${ENV_VAR:-fallback}`` or ``prefect-secret:NAME``.
        what: the config key, named in the error when the secret is missing.
    """
    env = _ENV_REF.match(ref)
    if env:
        value = os.environ.get(env["name"]) or env["default"]
        if not value:  # an empty variable (an uncommented `X_DM_TOKEN=`) is no secret
            raise ConfigError(f"{what}: environment variable {env['name']} is not set or empty")
        return SecretStr(value)
    block = _BLOCK_REF.match(ref)
    if block:
        from prefect.blocks.system import Secret

        try:
            secret = Secret.load(block["name"])
        except ValueError as exc:
            raise ConfigError(f"{what}: Prefect Secret block {block['name']!r} not found") from exc
        return SecretStr(str(secret.get()))  # type: ignore[union-attr]
    raise ConfigError(f"{what}: not a secret reference")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


XStream = Literal["mentions", "quotes", "reposts", "likes"]
ALL_X_STREAMS: tuple[XStream, ...] = ("mentions", "quotes", "reposts", "likes")


class XAccount(_Model):
    """A brand account on X whose engaged users we pull."""

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Short id, used for cursors and deployments"
    )
    platform: Literal["x"] = "x"
    user_id: str = Field(pattern=r"^[0-9]+$", description="The brand account's numeric user id")
    handle: str = Field(description="The brand account's handle, without @")
    api_base_url: WebUrl = "https://api.x.com"
    bearer_token: SecretRef
    dm_token: SecretRef | None = Field(
        None,
        description="OAuth2 user-context token with dm.read (DMs need user context); "
        "only for the tickets flow. It lives 2 hours: for scheduled runs give "
        "dm_refresh_token instead",
    )
    dm_refresh_token: SecretRef | None = Field(
        None,
        description="OAuth2 refresh token (scopes dm.read tweet.read users.read "
        "offline.access): runs renew the DM token with it. X rotates it at every renewal: "
        "the next one is kept in the state store, this one only starts the chain",
    )
    dm_client_id: str | None = Field(
        None, description="The X app's OAuth 2.0 client id (renewing needs it)"
    )
    dm_client_secret: SecretRef | None = Field(
        None, description="The app's OAuth 2.0 client secret, for a confidential client"
    )
    streams: list[XStream] = Field(default_factory=lambda: list(ALL_X_STREAMS))
    recent_posts: int = Field(
        20, ge=1, le=100, description="How many recent brand posts to scan for likes/reposts/quotes"
    )
    page_size: int = Field(100, ge=5, le=100)
    ca_bundle: Path | None = None
    timeout_seconds: float = Field(30, gt=0)
    max_rate_limit_wait_seconds: float = Field(
        900, ge=0, description="Longest wait for a rate-limit window before giving up"
    )

    @model_validator(mode="after")
    def _renewal_names_the_client(self) -> XAccount:
        if self.dm_refresh_token is not None and not self.dm_client_id:
            raise ValueError("dm_refresh_token needs dm_client_id (the app's OAuth 2.0 client id)")
        return self


Account = XAccount


class SalesforceAuth(_Model):
    """How to obtain a Salesforce access token.

    ``client_credentials`` and ``jwt`` talk to ``login_url`` (your My Domain);
    ``session`` takes a ready access token and ``instance_url``.
    """

    method: Literal["client_credentials", "jwt", "session"] = "client_credentials"
    client_id: SecretRef | None = None
    client_secret: SecretRef | None = None
    username: str | None = None
    private_key: SecretRef | None = None
    access_token: SecretRef | None = None
    jwt_audience: str = Field(
        "https://login.salesforce.com",
        description="JWT 'aud': https://login.salesforce.com, or https://test.salesforce.com",
    )

    @model_validator(mode="after")
    def _needs(self) -> SalesforceAuth:
        needed = {
            "client_credentials": ("client_id", "client_secret"),
            "jwt": ("client_id", "username", "private_key"),
            "session": ("access_token",),
        }[self.method]
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(f"method {self.method!r} needs {', '.join(missing)}")
        return self


MatchKeyName = Literal["external_id", "email", "profile_url", "handle"]
MATCH_KEY_NAMES: tuple[MatchKeyName, ...] = ("external_id", "email", "profile_url", "handle")


class MatchingSettings(_Model):
    """How a person is found among the org's Contacts and Leads before any write."""

    enabled: bool = Field(True, description="Look up existing Contacts and Leads first")
    keys: list[MatchKeyName] = Field(
        default_factory=lambda: list(MATCH_KEY_NAMES),
        description="Which keys may identify a person, strongest first",
    )
    contact_task_mapping: Path = Field(
        Path("task.salesforce.yaml"),
        description="The Task logged on a matched Contact (a customer gets no lead)",
    )


class CampaignSettings(_Model):
    """Put every lead a run creates or updates (and every matched customer) in one
    Salesforce campaign, once each."""

    id: str = Field(pattern=r"^701[A-Za-z0-9]{12}([A-Za-z0-9]{3})?$", description="Campaign Id")
    member_status: str | None = Field(
        None, description="CampaignMember status, e.g. Responded; empty: the campaign's default"
    )


class SalesforceSettings(_Model):
    kind: Literal["salesforce"] = "salesforce"
    login_url: WebUrl = Field(description="Your My Domain URL, e.g. https://acme.my.salesforce.com")
    instance_url: WebUrl | None = Field(None, description="Only for auth method 'session'")
    api_version: str = Field("60.0", pattern=r"^[0-9]{2}\.0$")
    auth: SalesforceAuth
    lead_mapping: Path = Path("lead.salesforce.yaml")
    batch_size: int = Field(
        2000,
        ge=1,
        le=100_000,
        description="People mapped and delivered per batch (one task); memory grows with it",
    )
    bulk_threshold: int = Field(
        2000,
        ge=1,
        description="Batches of this many records or more go through a Bulk API 2.0 job; "
        "smaller ones through sObject Collections (200 a call)",
    )
    auto_assign: bool = Field(False, description="Run lead assignment rules on create")
    matching: MatchingSettings = Field(default_factory=MatchingSettings)
    campaign: CampaignSettings | None = Field(
        None,
        description="Optional campaign the leads written and the customers matched join",
    )
    quota_headroom: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Stop writing once this share of the org's daily API requests is used",
    )
    ca_bundle: Path | None = None
    timeout_seconds: float = Field(30, gt=0)

    @model_validator(mode="after")
    def _session_needs_instance(self) -> SalesforceSettings:
        if self.auth.method == "session" and not self.instance_url:
            raise ValueError("auth method 'session' needs crm.instance_url")
        return self


class ZendeskSettings(_Model):
    """The helpdesk: API-token auth as ``{email}/token``."""

    kind: Literal["zendesk"] = "zendesk"
    base_url: WebUrl = Field(description="https://yoursubdomain.zendesk.com")
    email: str = Field(description="The agent the API token belongs to")
    api_token: SecretRef
    ticket_mapping: Path = Path("ticket.zendesk.yaml")
    ca_bundle: Path | None = None
    timeout_seconds: float = Field(30, gt=0)


class RoutingSettings(_Model):
    """Which messages become tickets, leads, or nothing."""

    rules: Path = Field(Path("routing.yaml"), description="Ordered routing rules (YAML)")
    tickets_from_mentions: bool = Field(
        False, description="Also turn public mentions that ask for help into tickets"
    )


DEFAULT_WEIGHTS: dict[EngagementKind, float] = {
    EngagementKind.MENTION: 3.0,
    EngagementKind.REPLY: 3.0,
    EngagementKind.QUOTE: 4.0,
    EngagementKind.REPOST: 2.0,
    EngagementKind.LIKE: 1.0,
    EngagementKind.FOLLOW: 1.0,
    EngagementKind.COMMENT: 3.0,
    EngagementKind.MESSAGE: 5.0,
}


INTENT_DIR = Path(__file__).resolve().parent / "intent"


def shipped_intent_languages() -> list[str]:
    """Languages with a shipped phrase list (``socialcrm/intent/{lang}.txt``)."""
    return sorted(path.stem for path in INTENT_DIR.glob("*.txt"))


def _check_language(value: str) -> str:
    value = value.strip().lower()
    if not (INTENT_DIR / f"{value}.txt").is_file():
        shipped = ", ".join(shipped_intent_languages()) or "none"
        raise ValueError(
            f"no shipped intent phrase list for {value!r} (shipped: {shipped}); "
            "add your own phrases to qualification.intent.extra_phrases instead"
        )
    return value


def _check_phrase(value: str) -> str:
    value = " ".join(value.split())
    if not re.search(r"\w", value):
        raise ValueError("an intent phrase needs at least one letter or digit")
    return value


class IntentSettings(_Model):
    """Buying-intent phrases in what people write ("pricing", "une démo") add to the score.

    Matching ignores case and accents and respects word boundaries ("demo" does not match
    "democracy"). Each distinct phrase found in the window counts once, decayed like the
    engagement that carried it; the total is capped by ``max_bonus``.
    """

    enabled: bool = Field(True, description="Add the intent bonus to the score")
    languages: list[Annotated[str, AfterValidator(_check_language)]] = Field(
        default_factory=lambda: ["en", "fr"],
        description="Shipped phrase lists to use (socialcrm/intent/{lang}.txt)",
    )
    weight: float = Field(
        5.0, ge=0, description="Points per distinct intent phrase found in the window"
    )
    max_bonus: float = Field(
        10.0, ge=0, description="Cap of the intent bonus, whatever the number of phrases"
    )
    extra_phrases: list[Annotated[str, AfterValidator(_check_phrase)]] = Field(
        default_factory=list,
        description="Your own phrases (any language), matched like the shipped ones",
    )


def _check_weights(value: dict[EngagementKind, float]) -> dict[EngagementKind, float]:
    negative = sorted(kind.value for kind, weight in value.items() if weight < 0)
    if negative:
        raise ValueError(f"weights must be 0 or more; negative for: {', '.join(negative)}")
    return value


class Qualification(_Model):
    """Who becomes a lead: a decayed, weighted engagement score at or above a threshold.

    Each engagement in the last ``window_days`` adds its kind's weight, halved every
    ``half_life_days`` of age; buying-intent phrases add a bonus (``intent``).
    """

    weights: Annotated[dict[EngagementKind, float], AfterValidator(_check_weights)] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS),
        description="Points per engagement kind (mention, reply, quote, repost, like, ...)",
    )
    threshold: float = Field(3.0, ge=0, description="A person with this score or more qualifies")
    window_days: int | None = Field(
        90,
        ge=1,
        description="Engagements older than this many days do not count; null: all history",
    )
    half_life_days: float | None = Field(
        30,
        gt=0,
        description="An engagement's weight halves every this many days of age; null: no decay",
    )
    intent: IntentSettings = Field(
        default_factory=IntentSettings, description="Buying-intent phrases that add to the score"
    )

    def weight(self, kind: EngagementKind | str) -> float:
        """A kind's weight; a kind this version does not know (as text) counts nothing.

        Text looks up as well as the enum (``EngagementKind`` is a ``StrEnum``: equal to
        its value and hashed alike), so scoring never pays for ``EngagementKind(text)``.
        """
        weights = cast(Mapping[str, float], self.weights)
        defaults = cast(Mapping[str, float], DEFAULT_WEIGHTS)
        return weights.get(kind, defaults.get(kind, 0.0))


def _check_handle(value: str) -> str:
    handle = value.strip().lstrip("@").lower()
    if not re.fullmatch(r"[\w.@-]{1,100}", handle):
        raise ValueError("expected a handle like @someone")
    return handle


def _check_user_ref(value: str) -> str:
    ref = value.strip()
    if not re.fullmatch(r"(?:[a-z][a-z0-9]*:)?[A-Za-z0-9_.@-]{1,100}", ref):
        raise ValueError("expected a person key like x:12345 or a bare user id like 12345")
    return ref


def _check_domain(value: str) -> str:
    domain = value.strip().lower().lstrip("@").removeprefix("*.").rstrip(".")
    if not re.fullmatch(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}", domain):
        raise ValueError("expected an email domain like example.com")
    return domain


class BotHeuristics(_Model):
    """Signals that an account is automated; a field the platform did not give is no signal.

    A person is a bot when ``signals_needed`` of the enabled signals hold, or when a hard
    one does (``hard_max_posts_per_day``). Set a signal's limit to null to disable it.
    """

    enabled: bool = Field(True, description="Skip accounts that look automated")
    signals_needed: int = Field(
        2, ge=1, le=4, description="How many of the signals must hold to call it a bot"
    )
    min_account_age_days: float | None = Field(
        30, gt=0, description="Signal: the account is younger than this many days"
    )
    max_posts_per_day: float | None = Field(
        144, gt=0, description="Signal: more posts a day than this, over the account's life"
    )
    hard_max_posts_per_day: float | None = Field(
        1000, gt=0, description="Bot on its own: more posts a day than this"
    )
    max_following_to_followers_ratio: float | None = Field(
        50, gt=0, description="Signal: follows more than this many accounts per follower"
    )
    min_following: int = Field(
        500, ge=0, description="The following/followers signal needs at least this many follows"
    )
    default_profile_image: bool = Field(
        True, description="Signal: the account still has the platform's default profile image"
    )

    @model_validator(mode="after")
    def _hard_above_soft(self) -> BotHeuristics:
        soft, hard = self.max_posts_per_day, self.hard_max_posts_per_day
        if soft is not None and hard is not None and hard < soft:
            raise ValueError(
                f"hard_max_posts_per_day ({hard:g}) must be at least max_posts_per_day ({soft:g})"
            )
        return self


class Exclusions(_Model):
    """People never turned into leads, each skip recorded with its reason."""

    handles: list[Annotated[str, AfterValidator(_check_handle)]] = Field(
        default_factory=list, description="Handles to skip, with or without @ (any case)"
    )
    user_ids: list[Annotated[str, AfterValidator(_check_user_ref)]] = Field(
        default_factory=list,
        description='Person keys ("x:12345") or bare user ids (any platform) to skip',
    )
    email_domains: list[Annotated[str, AfterValidator(_check_domain)]] = Field(
        default_factory=list,
        description="Skip people whose email (profile or bio) is at one of these domains or "
        "their subdomains: your company's own, competitors'",
    )
    bots: BotHeuristics = Field(default_factory=BotHeuristics)


def _check_person_key(value: str) -> str:
    key = value.strip()
    if not re.fullmatch(r"[a-z][a-z0-9]*:[A-Za-z0-9_.@-]{1,100}", key):
        raise ValueError('expected a person key like "x:12345" (platform, colon, user id)')
    return key


class ConsentSettings(_Model):
    """Opt-outs, and what ``socialcrm erase`` does in each system.

    Opt-outs and erasures are kept in the state store as keyed hashes; the ``opt_out`` list
    here is merged into it at the start of a run (removing a key here does not opt them
    back in: ``socialcrm consent remove`` does).
    """

    opt_out: list[Annotated[str, AfterValidator(_check_person_key)]] = Field(
        default_factory=list,
        description='Person keys ("x:12345") never to write about (merged in at run start)',
    )
    crm: Literal["delete", "anonymise", "keep"] = Field(
        "delete",
        description="On erase, the person's lead and our tasks: delete them, anonymise them "
        "(LastName 'Erased', personal fields emptied), or keep them. Contacts are never "
        "changed, only our tasks on them deleted",
    )
    helpdesk: Literal["redact", "delete", "keep"] = Field(
        "redact",
        description="On erase, their tickets: redact their words and name, close the tickets "
        "and delete the requester for good; delete the tickets for good as well; or keep all",
    )


class StateSettings(_Model):
    url: str = Field(
        "sqlite:///.socialcrm/state.db",
        description="SQLAlchemy URL; relative SQLite paths are relative to the config file",
    )


class RateLimit(_Model):
    """Pacing of one external system on top of what its rate-limit headers say."""

    per_second: float | None = Field(
        None, gt=0, description="At most this many calls a second from one run (all threads)"
    )
    prefect_limit: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="A Prefect global concurrency limit with slot decay shared by every "
        "worker (create it with `prefect gcl create NAME --limit N --slot-decay-per-second R`)",
    )


class Settings(_Model):
    accounts: list[Account] = Field(min_length=1)
    crm: SalesforceSettings
    helpdesk: ZendeskSettings | None = None
    routing: RoutingSettings = RoutingSettings()
    state: StateSettings = StateSettings()
    consent: ConsentSettings = ConsentSettings()
    qualification: Qualification = Qualification()
    exclusions: Exclusions = Exclusions()
    rate_limits: dict[Literal["x", "salesforce", "zendesk"], RateLimit] = Field(
        default_factory=dict
    )
    base_dir: Path = Field(Path("."), exclude=True)

    @model_validator(mode="after")
    def _unique_account_names(self) -> Settings:
        names = [account.name for account in self.accounts]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"account names must be unique; repeated: {', '.join(duplicated)}")
        return self

    def account(self, name: str | None) -> Account:
        if name is None:
            return self.accounts[0]
        for account in self.accounts:
            if account.name == name:
                return account
        known = ", ".join(a.name for a in self.accounts)
        raise ConfigError(f"accounts: no account named {name!r} (known: {known})")

    def path(self, value: Path) -> Path:
        """A path from the config, relative to the config file's folder."""
        return value if value.is_absolute() else (self.base_dir / value)

    def mapping_path(self, value: Path) -> Path:
        """A mapping file: next to the config first, else one of the shipped specs."""
        local = self.path(value)
        if local.exists():
            return local
        shipped = SHIPPED_MAPPINGS / value.name
        if shipped.exists():
            return shipped
        raise ConfigError(f"mapping file {value} not found (looked in {local} and {shipped})")

    def state_url(self) -> str:
        url = self.state.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str((self.base_dir / url[len(prefix) :]).resolve())
        return url


# Keys whose value may be a secret: what was written there is never echoed.
_SECRET_KEY = re.compile(r"secret|token|password|private_key|api_key|credential", re.IGNORECASE)
_SHOWN_ERRORS = 20


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    errors = exc.errors()
    for error in errors[:_SHOWN_ERRORS]:
        loc = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against socialcrm.example.yaml)"
        got = error.get("input")
        keys = [part for part in error["loc"] if isinstance(part, str)]
        hidden = (
            error["type"] in ("missing", "extra_forbidden")
            or "secret" in message
            or any(_SECRET_KEY.search(key) for key in keys)
        )
        shown = "" if hidden else f" (got {got!r:.80})"
        lines.append(f"  {loc[:120]}: {message}{shown}")
    if len(errors) > _SHOWN_ERRORS:
        lines.append(f"  ... and {len(errors) - _SHOWN_ERRORS} more")
    return "\n".join(lines)


def parse_settings(data: Any, *, source: Path, base_dir: Path) -> Settings:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    try:
        return Settings.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without the offending line: it may hold a secret."""
    problem = getattr(exc, "problem", None) or "cannot be parsed"
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}"


def load_settings(path: str | Path) -> Settings:
    """Read and validate the config file; errors name the key and what was expected."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"{path}: cannot read the config file: {reason}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    return parse_settings(data, source=path, base_dir=path.resolve().parent)
