"""The suppression list on SQLite and PostgreSQL: keyed hashes, batching, reasons, migration."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from socialcrm import consent, schema
from socialcrm.config import ConfigError, parse_settings
from socialcrm.state import StateStore

KEY = "x:918273645501"


def stored_rows(store: StateStore, table: sa.Table) -> list[dict[str, object]]:
    with store.transaction() as connection:
        return [dict(row) for row in connection.execute(sa.select(table)).mappings()]


def test_the_list_holds_keyed_hashes_only(state_url: str) -> None:
    with StateStore.open(state_url) as store:
        assert consent.opt_out(store, [KEY]) == 1
        (row,) = stored_rows(store, schema.suppressions)
        (salt,) = stored_rows(store, schema.store_meta)
    text = json.dumps(row, default=str)
    assert "918273645501" not in text
    assert row["key_hash"] != hashlib.sha256(KEY.encode()).hexdigest()  # keyed, not plain
    assert len(str(row["key_hash"])) == 64 and row["reason"] == "opt-out"
    assert salt["key"] == consent.SALT_KEY and len(bytes.fromhex(str(salt["value"]))) == 32


def test_each_store_has_its_own_salt(tmp_path: Path) -> None:
    one = StateStore.open(f"sqlite:///{tmp_path / 'one.db'}")
    two = StateStore.open(f"sqlite:///{tmp_path / 'two.db'}")
    again = StateStore.open(f"sqlite:///{tmp_path / 'one.db'}")
    try:
        assert consent.person_hash(one, KEY) != consent.person_hash(two, KEY)
        assert consent.person_hash(one, KEY) == consent.person_hash(again, KEY)
        assert len(consent.hash_prefix(one, KEY)) == consent.HASH_PREFIX
    finally:
        for store in (one, two, again):
            store.close()


def test_a_missing_salt_is_made_once(state_url: str) -> None:
    with StateStore.open(state_url) as store:
        with store.transaction() as connection:
            connection.execute(schema.store_meta.delete())
        first = consent.salt(store)
    with StateStore.open(state_url) as store:
        assert consent.salt(store) == first


def test_opt_out_is_idempotent_and_an_erasure_outranks_it(state_url: str) -> None:
    with StateStore.open(state_url) as store:
        assert consent.opt_out(store, [KEY, KEY, " "]) == 1
        assert consent.opt_out(store, [KEY]) == 0
        assert consent.opt_out(store, [KEY], consent.ERASED) == 1
        assert consent.opt_out(store, [KEY], consent.OPT_OUT) == 0
        assert consent.suppression_reasons(store, [KEY]) == {KEY: "erased"}
        with pytest.raises(ValueError):
            consent.opt_out(store, [KEY], "maybe")
        assert consent.withdraw(store, [KEY]) == 1
        assert consent.is_suppressed(store, [KEY]) == set()


def test_checks_are_batched_and_exact(state_url: str) -> None:
    suppressed = [f"x:{100000 + n}" for n in range(0, 2400, 2)]
    checked = [f"x:{100000 + n}" for n in range(2400)] + ["mastodon:100000"]
    with StateStore.open(state_url) as store:
        assert consent.opt_out(store, suppressed) == 1200
        assert consent.is_suppressed(store, checked) == set(suppressed)
        assert set(consent.suppression_reasons(store, checked)) == set(suppressed)
        assert consent.counts(store) == {"opt-out": 1200, "erased": 0, "audited": 0}


def test_the_exclusion_check_names_no_one(state_url: str) -> None:
    from socialcrm.state import PersonRow

    def person(key: str) -> PersonRow:
        platform, user_id = key.split(":")
        return PersonRow(key, platform, user_id, "h", {}, {}, 0, 0.0, None, None)

    with StateStore.open(state_url) as store:
        consent.opt_out(store, ["x:1"])
        consent.opt_out(store, ["x:2"], consent.ERASED)
        check = consent.suppression_check(store, ["x:1", "x:2", "x:3"])
    assert check(person("x:1")) == "consent: opted out"
    assert check(person("x:2")) == "consent: erased"
    assert check(person("x:3")) is None


def test_the_configured_list_is_merged_in(state_url: str, tmp_path: Path) -> None:
    data = {
        "accounts": [{"name": "brand", "user_id": "1", "handle": "b", "bearer_token": "${T}"}],
        "crm": {
            "login_url": "https://x.my.salesforce.com",
            "auth": {"client_id": "${A}", "client_secret": "${B}"},
        },
        "consent": {"opt_out": ["x:7", " x:8 "], "crm": "anonymise"},
    }
    settings = parse_settings(data, source=tmp_path / "c.yaml", base_dir=tmp_path)
    assert settings.consent.opt_out == ["x:7", "x:8"]
    assert settings.consent.helpdesk == "redact"
    with StateStore.open(state_url) as store:
        assert consent.merge_config(store, settings.consent) == 2
        assert consent.merge_config(store, settings.consent) == 0
        assert consent.is_suppressed(store, ["x:7", "x:8", "x:9"]) == {"x:7", "x:8"}
    for wrong in ({"opt_out": ["@handle"]}, {"crm": "shred"}, {"helpdesk": "forget"}):
        with pytest.raises(ConfigError):
            parse_settings(
                {**data, "consent": wrong}, source=tmp_path / "c.yaml", base_dir=tmp_path
            )


def test_a_dry_run_suppresses_no_one(state_url: str) -> None:
    with StateStore.open(state_url, dry_run=True) as store:
        consent.opt_out(store, [KEY])
        assert consent.is_suppressed(store, [KEY]) == {KEY}
    with StateStore.open(state_url) as store:
        assert consent.is_suppressed(store, [KEY]) == set()


def test_migration_0003_upgrades_0002_and_keeps_the_data(state_url: str) -> None:
    from alembic import command
    from alembic.config import Config as AlembicConfig

    from socialcrm.state import MIGRATIONS, create_engine, migrate

    engine = create_engine(state_url)
    with engine.begin() as connection:
        migrate(connection, "0002")
        tables = set(sa.inspect(connection).get_table_names())
        assert "messages" in tables and "suppressions" not in tables
        connection.execute(
            sa.text(
                "insert into cursors (account, stream, value, updated_at) "
                "values ('brand', 'mentions', '42', CURRENT_TIMESTAMP)"
            )
        )
    engine.dispose()
    with StateStore.open(state_url) as store:  # upgrades to head
        assert store.get_cursor("brand", "mentions") == "42"
        names = set(sa.inspect(store.engine).get_table_names())
        assert {"store_meta", "suppressions", "erasure_audit"} <= names
        made = stored_rows(store, schema.store_meta)
        assert [row["key"] for row in made] == [consent.SALT_KEY]
        consent.opt_out(store, [KEY])
    engine = create_engine(state_url)
    with engine.begin() as connection:  # and back down
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")
        assert "suppressions" not in set(sa.inspect(connection).get_table_names())
    engine.dispose()
