"""An org that is not empty: Contacts and Leads that already stand for some X people.

A real org holds customers (Contacts) and leads typed in by sales before any integration ran.
``seed_crm`` puts such records in the simulated org for a deterministic choice of the
sandbox's engaged X people, each findable one way, and returns the ground truth: for each
chosen person key, which record a correct matcher finds and by which key.

Cases (``CrmSeed`` says how many people of each; even positions get a Contact, odd a Lead,
where the case does not fix the object):

- ``external_id``: ``Social_Profile_Id__c = "x:<user id>"`` (and the handle): our own earlier
  record, or one a salesperson linked by hand.
- ``email``: only an ``Email`` (and a name). X never gives a person's email, so the truth
  names the address (``email``): the one written in the person's bio when there is one, else
  an invented one. A matcher is given it as if a DM or another source had provided it.
- ``handle``: only ``Social_Handle__c``, written as a salesperson would: ``@Name`` or ``name``
  in another case.
- ``profile_url``: only ``Social_Profile_URL__c`` (``https://x.com/<handle>``, sometimes
  with a trailing slash or another case).
- ``contact_over_lead``: a Contact by handle and our Lead by external id: the Contact wins.
- ``ambiguous``: two Leads with the person's handle and nothing stronger: no guess.
- ``converted``: our Lead by external id, converted (``IsConverted``) into a plain Contact.
- ``reused_handle``: a Lead with the person's handle but another person's external id (the
  handle changed hands): no match.
- ``noise``: records for nobody in the X world.

Truth entry (``object``/``id``/``matched_by`` are what a matcher should answer; ``None`` when
nothing should match; ``id`` is ``None`` and ``ambiguous`` lists the tied ids for an
ambiguous person)::

    {"x:123": {"case": "handle", "object": "Contact", "id": "003...", "matched_by": "handle",
               "owner_id": "005...", "is_converted": False, "converted_contact_id": None,
               "ambiguous": [], "handle": "ana_lopez", "profile_url": "https://x.com/ana_lopez",
               "email": None, "records": [{"object": "Contact", "id": "003...", "via": "handle"}]}}
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from sandbox.seed import World, XUser
from sandbox.sf_schema import OBJECTS
from sandbox.sf_store import RecordStore
from sandbox.wire import Request

CASES = (
    "external_id",
    "email",
    "handle",
    "profile_url",
    "contact_over_lead",
    "ambiguous",
    "converted",
    "reused_handle",
)
COMPANIES = ("Globex", "Initech", "Umbrella Corp", "Hooli", "Vandelay Industries", "Soylent")
_EMAIL_IN_TEXT = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_NO_ASSIGN = Request("POST", "", {}, {"sforce-auto-assign": "FALSE"})


@dataclass(frozen=True)
class CrmSeed:
    """How many X people each case gets (see the module doc), and unrelated records."""

    external_id: int = 6
    email: int = 4
    handle: int = 6
    profile_url: int = 4
    contact_over_lead: int = 2
    ambiguous: int = 2
    converted: int = 2
    reused_handle: int = 2
    noise: int = 12

    @classmethod
    def of(cls, value: CrmSeed | Mapping[str, Any] | bool) -> CrmSeed:
        """``True`` (the defaults), a mapping of counts, or a ``CrmSeed``."""
        if isinstance(value, CrmSeed):
            return value
        if value is True:
            return cls()
        if not isinstance(value, Mapping):
            raise ValueError("crm_seed must be true, a mapping of counts, or a CrmSeed")
        known = {f.name for f in fields(cls)}
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"unknown crm_seed counts {sorted(unknown)}; known: {sorted(known)}")
        counts = {name: int(n) for name, n in value.items()}
        if any(n < 0 for n in counts.values()):
            raise ValueError("crm_seed counts must be >= 0")
        return cls(**counts)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _candidates(world: World) -> list[XUser]:
    """Engaged, ordinary people (no suspended, hostile or bot accounts), most engaged first
    within a stable order, so the seeded people are ones a leads run is likely to deliver."""
    weights = {"mention": 3, "reply": 3, "quote": 4, "repost": 2, "like": 1}
    scores: dict[str, int] = {}
    for t in world.tweets:
        scores[t.author_id] = scores.get(t.author_id, 0) + weights.get(t.kind, 0)
    for r in world.reactions:
        scores[r.user_id] = scores.get(r.user_id, 0) + weights.get(r.kind, 0)
    people = [
        u
        for u in world.users.values()
        if u.id in scores
        and u.id != world.brand.id
        and not u.suspended
        and u.hostile is None
        and getattr(u, "bot", None) is None
        and u.username
    ]
    people.sort(key=lambda u: (-min(scores[u.id], 6), int(u.id)))
    return people


def _names(user: XUser) -> tuple[str | None, str]:
    parts = [p for p in re.split(r"\s+", user.name.strip()) if p.isalpha()]
    if len(parts) >= 2:
        return parts[0][:40], parts[-1][:80]
    return None, (parts[0] if parts else user.username)[:80]


def _email(user: XUser) -> str:
    found = _EMAIL_IN_TEXT.search(user.description or "")
    return (found[0] if found else f"{user.username}@example.net").lower()


def found(obj: str, rid: str, owner: str, via: str, entry: dict[str, Any]) -> None:
    entry.update(object=obj, id=rid, owner_id=owner, matched_by=via)


def seed_crm(store: RecordStore, world: World, seed: int, spec: CrmSeed) -> dict[str, Any]:
    """Add the existing records to ``store`` (no API call is counted) and return the truth.

    The same world, seed and spec choose the same people and write the same records; ids
    are the same too when the org is seeded before any other write (at sandbox start).
    """
    rng = random.Random(f"socialcrm-crm-{seed}")
    pool = _candidates(world)
    wanted = sum(getattr(spec, case) for case in CASES)
    if wanted > len(pool):
        raise ValueError(f"crm_seed wants {wanted} people; the X world has {len(pool)} to offer")
    chosen = pool[: max(wanted * 2, wanted)]
    rng.shuffle(chosen)
    usernames = {u.username.lower() for u in world.users.values()}
    truth: dict[str, Any] = {}

    def add(name: str, values: dict[str, Any]) -> tuple[str, str]:
        owner = rng.choice(store.owners)
        rid = store.apply(OBJECTS[name], {"OwnerId": owner, **values}, None, _NO_ASSIGN)
        return rid, owner

    def person(obj: str, user: XUser, **extra: Any) -> dict[str, Any]:
        first, last = _names(user)
        values: dict[str, Any] = {"FirstName": first, "LastName": last, **extra}
        if obj == "Lead":
            values["Company"] = rng.choice(COMPANIES)
            values["LeadSource"] = rng.choice(("Web", "Phone Inquiry", "Partner Referral"))
        return {k: v for k, v in values.items() if v is not None}

    cursor = 0
    for case in CASES:
        for n in range(getattr(spec, case)):
            user = chosen[cursor]
            cursor += 1
            key = f"x:{user.id}"
            obj = "Contact" if n % 2 == 0 else "Lead"
            handle, url = user.username, f"https://x.com/{user.username}"
            entry: dict[str, Any] = {
                "case": case,
                "object": None,
                "id": None,
                "matched_by": None,
                "owner_id": None,
                "is_converted": False,
                "converted_contact_id": None,
                "ambiguous": [],
                "handle": handle,
                "profile_url": url,
                "email": None,
                "records": [],
            }

            if case == "external_id":
                rid, owner = add(
                    obj, person(obj, user, Social_Profile_Id__c=key, Social_Handle__c=handle)
                )
                found(obj, rid, owner, "external_id", entry)
                entry["records"].append({"object": obj, "id": rid, "via": "external_id"})
            elif case == "email":
                email = _email(user)
                written = email if n % 2 == 0 else email.upper()  # typed in by hand
                rid, owner = add(obj, person(obj, user, Email=written))
                found(obj, rid, owner, "email", entry)
                entry["email"] = email
                entry["records"].append({"object": obj, "id": rid, "via": "email"})
            elif case == "handle":
                written = f"@{handle}" if n % 2 == 0 else handle.upper()
                rid, owner = add(obj, person(obj, user, Social_Handle__c=written))
                found(obj, rid, owner, "handle", entry)
                entry["records"].append({"object": obj, "id": rid, "via": "handle"})
            elif case == "profile_url":
                written = url + "/" if n % 2 == 0 else url.replace(handle, handle.upper())
                rid, owner = add(obj, person(obj, user, Social_Profile_URL__c=written))
                found(obj, rid, owner, "profile_url", entry)
                entry["records"].append({"object": obj, "id": rid, "via": "profile_url"})
            elif case == "contact_over_lead":
                cid, owner = add("Contact", person("Contact", user, Social_Handle__c=handle))
                lid, _ = add("Lead", person("Lead", user, Social_Profile_Id__c=key))
                found("Contact", cid, owner, "handle", entry)
                entry["records"] += [
                    {"object": "Contact", "id": cid, "via": "handle"},
                    {"object": "Lead", "id": lid, "via": "external_id"},
                ]
            elif case == "ambiguous":
                ids = [add("Lead", person("Lead", user, Social_Handle__c=handle))[0] for _ in "ab"]
                entry.update(object="Lead", matched_by="handle", ambiguous=sorted(ids))
                entry["records"] += [{"object": "Lead", "id": i, "via": "handle"} for i in ids]
            elif case == "converted":
                cid, _ = add("Contact", person("Contact", user))
                lid, owner = add(
                    "Lead",
                    person(
                        "Lead",
                        user,
                        Social_Profile_Id__c=key,
                        Social_Handle__c=handle,
                        IsConverted=True,
                        ConvertedContactId=cid,
                        Status="Closed - Converted",
                    ),
                )
                found("Lead", lid, owner, "external_id", entry)
                entry.update(is_converted=True, converted_contact_id=cid)
                entry["records"] += [
                    {"object": "Lead", "id": lid, "via": "external_id"},
                    {"object": "Contact", "id": cid, "via": "converted_from"},
                ]
            else:  # reused_handle
                other = f"x:{rng.randrange(10**15, 10**16)}"
                rid, _ = add(
                    "Lead",
                    person("Lead", user, Social_Handle__c=handle, Social_Profile_Id__c=other),
                )
                entry["records"].append({"object": "Lead", "id": rid, "via": "stale_handle"})
            truth[key] = entry
    for n in range(spec.noise):
        handle = f"noise_{rng.randrange(10**6)}"
        while handle in usernames:
            handle = f"noise_{rng.randrange(10**6)}"
        values: dict[str, Any] = {
            "FirstName": rng.choice(("Kim", "Lee", "Sam", "Alex", "Noor", "Yuki")),
            "LastName": rng.choice(("Park", "Okafor", "Novak", "Silva", "Berg", "Tanaka")),
            "Email": f"{handle}@example.org",
            "Social_Handle__c": handle,
        }
        if n % 2:
            values["Company"] = rng.choice(COMPANIES)
        add("Lead" if n % 2 else "Contact", values)
    return truth
