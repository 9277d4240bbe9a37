"""Benchmark: the mapping engine against a plain per-row mapping, side by side.

Both map the same synthetic lead candidates (the columns ``socialcrm.qualify`` builds,
with the names, emails and summaries real people produce: emoji, accents, titles,
missing and broken emails, long summaries, and a sprinkle of hostile text) with the
shipped Lead spec and the sandbox's Lead describe.

Run ``python -m bench.mapping`` for a markdown table; ``run()`` returns the rows.
"""

from __future__ import annotations

import gc
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.baseline_mapping import map_rows
from connectors.crm.salesforce import parse_describe
from mappings import SPEC_DIR, MappingResult, MappingSpec, apply_spec, load_spec
from sandbox.sf_schema import OBJECTS
from socialcrm.qualify import CANDIDATE_COLUMNS, KIND_PLURALS, PLATFORM_NAMES
from socialcrm.records import DestinationField, EngagementKind

SIZES = (1_000, 10_000, 100_000, 1_000_000)
BASELINE_BUDGET_S = 60.0
"""The baseline is not run at a size where its rate so far predicts more seconds than this."""

# --- synthetic lead candidates -------------------------------------------------------------

_FIRST = [
    "Ann", "José", "Zoë", "Siobhán", "François", "Łukasz", "Ngọc", "Søren", "Mary Jane",
    "İbrahim", "Chloé", "Björn", "Anaïs", "João", "Renée", "Dmitri", "Priya", "Kwame",
    "Aoife", "Mateus", "Lena", "Omar", "Yuki", "Élodie", "Raúl", "Ségolène", "Jürgen",
    "Ifeoma", "Tomás", "Nadia", "山田", "محمد", "Иван", "देव", "Σοφία", "김민준", "Nguyễn",
    "Ayşe", "Chen", "Fatima", "Ola", "Marie-Claire", "Jean-Luc", "Ana Sofía", "Wei",
    "Ngozi", "Sven", "Mei", "Zsófia", "Håkon", "Małgorzata", "Ørjan", "Luís", "Cem",
    "Thảo", "Дарья", "Αλέξανδρος", "Noa", "Tariq", "Bea",
]  # fmt: skip
_LAST = [
    "Smith", "Núñez", "Ray", "O'Brien", "Dubois", "Kowalski", "Nguyễn", "Ødegaard",
    "Watson", "Yılmaz", "Müller", "García-Márquez", "da Silva", "Petrov", "Sharma",
    "Mensah", "Ní Bhriain", "Ferreira", "Schmidt", "Haddad", "Tanaka", "Lefèvre",
    "Fernández", "de La Tour", "Groß", "Okafor", "Lindqvist", "Zhang", "太郎", "علي",
    "Петров", "शर्मा", "Παπαδοπούλου", "Kim", "Tran", "Öztürk", "Li", "Benali",
    "Nakamura", "van der Berg", "Mac Giolla", "Wiśniewska", "Kovač", "Järvinen",
    "Čapek", "Đorđević", "Ó Súilleabháin", "Lopes", "St. John", "Abdullah", "Ivanova",
    "Rossi", "Bianchi", "Eriksen", "Hansen", "Costa", "Moreau", "Laurent", "Dupont",
    "Martin", "Bernard", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy",
    "Roux", "Fournier", "Girard", "Bonnet", "Mercier", "Blanc", "Guerin", "Boyer",
    "Garnier", "Chevalier", "Francois", "Legrand", "Gauthier",
]  # fmt: skip
_TITLES = ["", "", "", "", "", "", "Dr. ", "Prof. ", "Mr ", "Mme ", "Sir "]
_SUFFIXES = [
    "", "", "", "", "", "", "", "", " 🚀", " 🇪🇸", " ✨", " | Founder @Acme", " (she/her)",
    " 👨\u200d💻", " 🏳️\u200d🌈", " Jr.", ", PhD", " 💙💛", " #OpenToWork", " ☕", " 🇫🇷🇬🇧",
    " \u2728 building in public", " - CTO", " 🌱",
]  # fmt: skip
_HOSTILE = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\u200b\u200d",
    "\u202eevil",
    "🚀" * 50,
    "<script>alert(1)</script>",
    "' OR Name != '",
    '=HYPERLINK("http://evil.example")',
    "+cmd|' /C calc'!A0",
    "\t\r\n",
    "x" * 300,
    "Zoë\u200b Ray\u200d",
    "A\x00nn\x07 Smith",
    "\u202bمحمد علي\u202c\u200f",
    "👨\u200d👩\u200d👧",
    "🚀🚀",
    ".",
    "_",
    "ﷺ",
    "null",
]
_CITIES = [
    "Paris", "Lyon", "São Paulo", "New York, NY", "Berlin 🇩🇪", "東京", "London", "Kraków",
    "Zürich", "Montréal, QC", "Lagos 🇳🇬", "Bengaluru", "Москва", "Remote 🌍", "Earth",
    "she/her · Brooklyn", "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch",
    " Marseille ", "\u00a0Nantes", "🌍" * 21, "",
]  # fmt: skip
_DOMAINS = ["gmail.com", "Example.COM", "acme.io", "outlook.fr", "proton.me", "yahoo.co.uk"]
_BAD_EMAILS = ["bad@", "ann(at)example", "", "n/a", "@@", "ann@example", "ann @x.io", "📧"]
_EXCERPT_TEXT = (
    "love the new release can't wait to try it this is exactly what we needed "
    "pricing question how much for a team of 12 thanks for the quick fix "
    "génial merci beaucoup très bien vraiment impressionnant 🔥 ❤️ the team is great "
    "does it integrate with Salesforce? demo please @brand #buildinpublic "
    "our whole team switched last month and honestly the onboarding was smooth "
    "¿cuánto cuesta la licencia? 料金はいくらですか привет отличная работа "
    "broken again since the update 😡 any news on the API limits"
)
_WORDS = _EXCERPT_TEXT.split()
_KINDS = [kind.value for kind in EngagementKind]
_NO_TEXT_KINDS = ("like", "repost", "follow")


def _excerpts(rng: np.random.Generator, count: int) -> list[str]:
    lengths = rng.integers(3, 30, size=count)
    words = rng.integers(0, len(_WORDS), size=int(lengths.sum()))
    out, at = [], 0
    for length in lengths.tolist():
        out.append(" ".join(_WORDS[i] for i in words[at : at + length].tolist())[:280])
        at += length
    return out


def _ascii(name: str) -> str:
    """A name as people write it in handles and email addresses: ASCII letters only."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return "".join(c for c in folded if c.isalnum()).lower() or "user"


def _iso(stamps: np.ndarray) -> list[str]:
    return [text + "+00:00" for text in np.datetime_as_string(stamps, unit="s").tolist()]


def candidate_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` lead candidates shaped like ``lead_candidates`` + the flow's ``record_key``.

    Display names are about 90% distinct: titles, middle initials, accents, several
    scripts, emoji and flag suffixes, 2% missing. Handles and addresses are ASCII; 60% of
    the people have no email, 5% a broken one, 3% one in capitals with spaces around.
    Summaries follow ``qualify.summary_text`` with 1 to 5 top engagements (mostly 1 or
    2): about 400 characters on average, a third with emoji. About 30 cities (some with
    flags, some too long for City), 7 spellings of platforms, ISO dates with ``+00:00``.
    Hostile text (NUL, lone surrogates, control characters, formulas, 300-character
    values, over 32,000 characters in a summary) replaces 0.1 to 0.5% of the values of
    each text column.
    """
    rng = np.random.default_rng(seed)

    def pick(pool: Sequence[Any], p: Sequence[float] | None = None) -> list[Any]:
        return [pool[i] for i in rng.choice(len(pool), size=n, p=p).tolist()]

    def hostile(values: list[Any], rate: float) -> list[Any]:
        for i in np.flatnonzero(rng.random(n) < rate).tolist():
            values[i] = _HOSTILE[int(rng.integers(len(_HOSTILE)))]
        return values

    platform = pick(
        ["x", "mastodon", "instagram", "twitter", " Bluesky ", "X", "myspace"],
        [0.55, 0.2, 0.15, 0.04, 0.03, 0.02, 0.01],
    )
    user_id = [str(v) for v in rng.integers(10**6, 10**18, size=n).tolist()]
    person_key: list[str | None] = [f"{p}:{u}" for p, u in zip(platform, user_id, strict=True)]
    for i in np.flatnonzero(rng.random(n) < 0.0005).tolist():
        person_key[i] = None if i % 2 else "k" * 81
    first = pick(_FIRST)
    last = pick(_LAST)
    plain = {name: _ascii(name) for name in (*_FIRST, *_LAST)}
    middle = pick([""] * 20 + [f" {c}." for c in "ABCDEFGHJKLMNPRSTVW"])
    title = pick(_TITLES)
    suffix = pick(_SUFFIXES)
    display_name: list[str | None] = [
        f"{t}{f}{m} {la}{s}"
        for t, f, m, la, s in zip(title, first, middle, last, suffix, strict=True)
    ]
    for i in np.flatnonzero(rng.random(n) < 0.02).tolist():
        display_name[i] = None
    display_name = hostile(display_name, 0.005)
    numbers = rng.integers(0, 10_000, size=n).tolist()
    handle: list[str | None] = [
        f"{plain[f][:6]}_{plain[la][:8]}{k}" for f, la, k in zip(first, last, numbers, strict=True)
    ]
    handle = hostile(handle, 0.002)
    email_roll = rng.random(n)
    domains = pick(_DOMAINS)
    bad = pick(_BAD_EMAILS)
    email: list[str | None] = []
    for i, roll in enumerate(email_roll.tolist()):
        if roll < 0.6:
            email.append(None)
        elif roll < 0.65:
            email.append(bad[i])
        else:
            address = f"{plain[first[i]]}.{plain[last[i]]}{numbers[i]}@{domains[i]}"
            email.append(f" {address.upper()} " if roll > 0.97 else address)
    email = hostile(email, 0.001)
    location: list[str | None] = pick([*_CITIES, None, None, None, None, None, None])
    location = hostile(location, 0.002)
    profile_url: list[str | None] = [
        f"https://{'x.com' if p in ('x', 'X', 'twitter') else p.strip().lower() + '.social'}/{h}"
        for p, h in zip(platform, handle, strict=True)
    ]
    for i in np.flatnonzero(rng.random(n) < 0.01).tolist():
        profile_url[i] = "not a url" if i % 3 else None

    score = np.round(rng.gamma(2.0, 4.0, size=n), 2)
    counts = {kind: rng.poisson(0.6, size=n) for kind in _KINDS}
    engagement_count: np.ndarray = np.sum([counts[kind] for kind in _KINDS], axis=0) + 1
    counts["mention"] = counts["mention"] + 1
    last_at = np.datetime64("2026-01-01T00:00:00") + rng.integers(0, 330 * 86400, size=n).astype(
        "timedelta64[s]"
    )
    first_at = last_at - rng.integers(0, 200 * 86400, size=n).astype("timedelta64[s]")
    last_text = _iso(last_at)
    first_text = _iso(first_at)
    for i in np.flatnonzero(rng.random(n) < 0.001).tolist():
        last_text[i] = "yesterday"

    excerpts = _excerpts(rng, 4096)
    top_counts = rng.choice([1, 2, 3, 4, 5], size=n, p=[0.5, 0.25, 0.12, 0.07, 0.06]).tolist()
    excerpt_at = rng.integers(0, len(excerpts), size=n).tolist()
    status_ids = rng.integers(10**17, 10**18 * 9, size=n).tolist()
    count_rows = np.column_stack([counts[kind] for kind in _KINDS]).tolist()
    summaries: list[str | None] = []
    for i in range(n):
        name = PLATFORM_NAMES.get(platform[i], platform[i])
        pairs = sorted(
            ((k, c) for k, c in zip(_KINDS, count_rows[i], strict=True) if c),
            key=lambda item: (-item[1], item[0]),
        )
        done = ", ".join(f"{c} {KIND_PLURALS[k] if c != 1 else k}" for k, c in pairs)
        day_last, day_first = last_text[i][:10], first_text[i][:10]
        lines = [
            f"Engagement score {score[i]:g} from {engagement_count[i]} engagements with the "
            f"brand on {name} ({done}), first {day_first}, last {day_last}.",
            "Top engagements:",
        ]
        for j in range(top_counts[i]):
            kind = _KINDS[(i + j) % len(_KINDS)]
            post = f"https://x.com/brand/status/{status_ids[i] + j}"
            if kind in _NO_TEXT_KINDS:
                lines.append(f"- {day_last} {kind} of {post}")
            else:
                text = excerpts[(excerpt_at[i] + j) % len(excerpts)]
                lines.append(f'- {day_last} {kind}: "{text}" {post}')
        summaries.append("\n".join(lines))
    summaries = hostile(summaries, 0.002)
    for i in np.flatnonzero(rng.random(n) < 0.0002).tolist():
        summaries[i] = "long " * 7_000  # over Description's 32,000 characters: truncated

    followers = rng.integers(0, 50_000, size=n).astype("float64")
    followers[rng.random(n) < 0.1] = np.nan
    verified = pick([True, False, False, False, None])
    columns: dict[str, Any] = {
        "person_key": person_key,
        "platform": platform,
        "user_id": user_id,
        "handle": handle,
        "display_name": display_name,
        "bio": pick([None, "Building things", "CTO @acme 🚀", "she/her | coffee ☕", ""]),
        "location": location,
        "profile_url": profile_url,
        "followers": followers,
        "following": rng.integers(0, 5_000, size=n),
        "verified": verified,
        "email": email,
        "score": score,
        "engagement_count": engagement_count,
        **{f"{kind}_count": counts[kind] for kind in _KINDS},
        "first_engaged_at": first_text,
        "last_engaged_at": last_text,
        "engagement_summary": summaries,
        "top_post_url": [f"https://x.com/brand/status/{s}" for s in status_ids],
    }
    frame = pd.DataFrame({name: columns[name] for name in CANDIDATE_COLUMNS})
    # What the leads flow adds: 2% of the people also asked sales in a DM that is a ticket.
    tickets: list[str | None] = [None] * n
    for i in np.flatnonzero(rng.random(n) < 0.02).tolist():
        tickets[i] = f"https://acme.zendesk.com/agent/tickets/{i + 1}"
    return frame.assign(
        record_key=frame["person_key"],
        helpdesk_ticket_url=pd.Series(tickets, index=frame.index, dtype="str"),
    )


# --- destination metadata ------------------------------------------------------------------


def lead_fields() -> dict[str, DestinationField]:
    """The sandbox's Lead describe, read the way ``connectors.crm.salesforce`` reads it."""
    return parse_describe(OBJECTS["Lead"].describe("62.0"))


# --- measuring -------------------------------------------------------------------------------


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _measure(
    work: Callable[[], MappingResult], repeats: int
) -> tuple[float, float, float | None, Any]:
    """(best wall seconds, best CPU seconds, peak memory in MiB above the start, result).

    CPU time is this process's only: on a shared machine it moves less than wall time.
    Peak memory is Linux's resident high-water mark, reset before each run
    (``/proc/self/clear_refs``); None where that is not available. Garbage is collected
    before each run; the collector stays on, as in a flow.
    """
    wall, cpu, peak, result = float("inf"), float("inf"), None, None
    for _ in range(repeats):
        result = None
        gc.collect()
        start_kib = _rss_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            start_kib = None
        began, began_cpu = time.perf_counter(), time.process_time()
        result = work()
        wall = min(wall, time.perf_counter() - began)
        cpu = min(cpu, time.process_time() - began_cpu)
        high_kib = _rss_kib("VmHWM")
        if start_kib is not None and high_kib is not None:
            used = (high_kib - start_kib) / 1024
            peak = used if peak is None else max(peak, used)
    return wall, cpu, peak, result


def _same(left: MappingResult, right: MappingResult) -> bool:
    def problems(result: MappingResult) -> list[tuple[Any, ...]]:
        return [
            (p.record_key, p.field, p.reason, p.payload)
            for p in [*result.rejected, *result.warnings]
        ]

    return (
        left.keys == right.keys
        and left.records == right.records
        and problems(left) == problems(right)
    )


def run(sizes: Sequence[int] = SIZES) -> list[dict[str, Any]]:
    """Time the engine and the per-row baseline on the same data, size by size.

    Returns one dict per size: rows, seconds and rows a second for each, the ratio
    engine/baseline, peak memory (MiB above the start of the run) and whether both gave
    the same records and problems. The baseline is skipped (None) from the size at which
    its previous rate predicts more than ``BASELINE_BUDGET_S`` seconds; nothing is
    extrapolated.
    """
    spec: MappingSpec = load_spec(SPEC_DIR / "lead.salesforce.yaml")
    fields = lead_fields()
    warm = candidate_frame(2_000, seed=1)  # compiles regexes and character tables once
    apply_spec(spec, warm, fields)
    map_rows(spec, warm, fields)
    rows: list[dict[str, Any]] = []
    baseline_rate: float | None = None
    for size in sizes:
        frame = candidate_frame(size, seed=size)
        repeats = max(1, min(5, 300_000 // size))

        def engine(frame: pd.DataFrame = frame) -> MappingResult:
            return apply_spec(spec, frame, fields, key_column="record_key")

        def baseline(frame: pd.DataFrame = frame) -> MappingResult:
            return map_rows(spec, frame, fields, key_column="record_key")

        engine_s, engine_cpu, engine_mib, engine_result = _measure(engine, repeats)
        row: dict[str, Any] = {
            "rows": size,
            "engine_s": engine_s,
            "engine_rows_per_s": size / engine_s,
            "engine_cpu_rows_per_s": size / engine_cpu,
            "engine_peak_mib": engine_mib,
            "baseline_s": None,
            "baseline_rows_per_s": None,
            "baseline_cpu_rows_per_s": None,
            "baseline_peak_mib": None,
            "ratio": None,
            "same_output": None,
            "rejected": len(engine_result.rejected),
            "warnings": len(engine_result.warnings),
        }
        if baseline_rate is None or size / baseline_rate <= BASELINE_BUDGET_S:
            base_s, base_cpu, base_mib, base_result = _measure(baseline, 1)
            baseline_rate = size / base_s
            row.update(
                baseline_s=base_s,
                baseline_rows_per_s=baseline_rate,
                baseline_cpu_rows_per_s=size / base_cpu,
                baseline_peak_mib=base_mib,
                ratio=row["engine_rows_per_s"] / baseline_rate,
                same_output=_same(engine_result, base_result),
            )
            del base_result
        del engine_result, frame
        rows.append(row)
    return rows


def _number(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def markdown(results: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| rows | engine s | engine rows/s (CPU) | baseline s | baseline rows/s (CPU) "
        "| engine/baseline | engine peak MiB | baseline peak MiB | same output |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for row in results:
        same = {None: "n/a", True: "yes", False: "NO"}[row["same_output"]]
        lines.append(
            f"| {row['rows']:,} | {_number(row['engine_s'], 3)} "
            f"| {_number(row['engine_rows_per_s'])} ({_number(row['engine_cpu_rows_per_s'])}) "
            f"| {_number(row['baseline_s'], 2)} "
            f"| {_number(row['baseline_rows_per_s'])} "
            f"({_number(row['baseline_cpu_rows_per_s'])}) "
            f"| {'n/a' if row['ratio'] is None else format(row['ratio'], '.1f') + 'x'} "
            f"| {_number(row['engine_peak_mib'])} | {_number(row['baseline_peak_mib'])} "
            f"| {same} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    chosen = tuple(int(arg.replace("_", "")) for arg in sys.argv[1:]) or SIZES
    print(markdown(run(chosen)))
