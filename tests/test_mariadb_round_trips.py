"""MariaDB's shortcuts: the upsert that returns its row, and the isolation level kept on a
pooled connection between our transactions (and given back for the host's)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from flask_partnerstack_stripe import testing
from flask_partnerstack_stripe.extension import State, get_state
from flask_partnerstack_stripe.upserts import (
    insert_loading,
    insert_on_conflict,
)

from .apphost import create_app
from .conftest import use_mariadb


@pytest.fixture
def database_url() -> str:
    return use_mariadb()


@pytest.fixture
def app_config() -> dict[str, Any]:
    # One pooled connection: every transaction, ours and the host's, runs on it.
    return {"SQLALCHEMY_ENGINE_OPTIONS": {"pool_size": 1, "max_overflow": 0}}


def statements(engine: sa.Engine) -> list[str]:
    """The statements run on ``engine`` from now on (the list grows)."""
    seen: list[str] = []

    def record(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    return seen


# --- the upsert that returns its row --------------------------------------------------------


def upsert_transaction(
    state: State, key: str, amount: int, *, update: bool = True, where: bool = True
) -> Any:
    """``insert_loading`` of a transaction row: a new amount taken when it is larger."""
    Transaction = state.models.Transaction
    table = Transaction.__table__
    session = state.db.session()
    statement = insert_on_conflict(
        session,
        table,
        {"key": key, "amount": amount, "currency": "usd", "account_scope": ""},
        keys=[table.c.account_scope, table.c.key],
        update=(lambda new: {"amount": new.amount}) if update else None,
        where=(lambda new: new.amount > table.c.amount) if where else None,
        whole_row=True,
    )
    with state.unit_of_work(session):
        return insert_loading(session, Transaction, statement)


def fresh(state: State, key: str) -> dict[str, Any]:
    """The committed row, read in a new session."""
    Transaction = state.models.Transaction
    with Session(state.db.engine) as session:
        row = session.scalars(sa.select(Transaction).filter_by(key=key)).one()
        return {column.key: getattr(row, column.key) for column in Transaction.__table__.c}


def as_loaded(instance: Any) -> dict[str, Any]:
    return {column.key: getattr(instance, column.key) for column in type(instance).__table__.c}


def test_one_statement_loads_the_row_it_inserted_as_a_read_gives_it(app: Flask) -> None:
    state = get_state(app)
    with app.app_context():
        seen = statements(state.db.engine)
        won = upsert_transaction(state, "ch_rt_1", 500)
        (upsert,) = [s for s in seen if s.lstrip().upper().startswith(("INSERT", "SELECT"))]
        assert "RETURNING" in upsert
        # The database's own values: DATETIME without microseconds nor zone, booleans
        # and defaults as stored, the id it picked.
        assert as_loaded(won) == fresh(state, "ch_rt_1")
        assert won.created_at.microsecond == 0 and won.failed is False


def test_a_lost_upsert_loads_nothing_and_a_won_update_loads_the_updated_row(app: Flask) -> None:
    state = get_state(app)
    with app.app_context():
        first = upsert_transaction(state, "ch_rt_2", 500)
        assert upsert_transaction(state, "ch_rt_2", 400) is None  # the condition held not
        assert upsert_transaction(state, "ch_rt_2", 900, update=False) is None  # no update
        taken = upsert_transaction(state, "ch_rt_2", 700)
        assert taken.id == first.id and taken.amount == 700
        assert as_loaded(taken) == fresh(state, "ch_rt_2")
        always = upsert_transaction(state, "ch_rt_2", 600, where=False)
        assert always.amount == 600 and as_loaded(always) == fresh(state, "ch_rt_2")


def test_a_won_insert_is_told_from_a_lost_one_whatever_came_before(app: Flask) -> None:
    # LAST_INSERT_ID carries the outcome: neither a lost upsert just before (the mark
    # left set) nor an earlier insert elsewhere (its id, maybe the same number) may
    # pass for this statement's outcome.
    state = get_state(app)
    with app.app_context():
        first = upsert_transaction(state, "ch_rt_3", 500)
        assert upsert_transaction(state, "ch_rt_3", 100) is None
        second = upsert_transaction(state, "ch_rt_4", 100)
        assert second is not None and second.id != first.id
        session = state.db.session()
        with state.unit_of_work(session):
            # The same number as the next transaction id, inserted just before, then the
            # upsert in the same transaction and connection.
            connection = session.connection()
            connection.exec_driver_sql("SELECT LAST_INSERT_ID(%s)", (second.id + 1,))
            Transaction = state.models.Transaction
            table = Transaction.__table__
            statement = insert_on_conflict(
                session,
                table,
                {"key": "ch_rt_5", "amount": 1, "currency": "usd", "account_scope": ""},
                keys=[table.c.account_scope, table.c.key],
                whole_row=True,
            )
            third = insert_loading(session, Transaction, statement)
        assert third is not None and third.key == "ch_rt_5"


def test_an_insert_select_loads_its_row_or_nothing(app: Flask) -> None:
    # INSERT ... SELECT <values> WHERE <guard>: the guard's SELECT of no row inserts and
    # returns nothing; a unique conflict loses as a VALUES insert does.
    state = get_state(app)
    Transaction = state.models.Transaction
    table = Transaction.__table__
    names = ("key", "amount", "currency", "account_scope")
    guard = ~sa.exists().where(table.c.currency == sa.bindparam("refuse"))
    row = sa.select(*(sa.bindparam(name, type_=table.c[name].type) for name in names))
    with app.app_context():
        session = state.db.session()
        statement = insert_on_conflict(
            session,
            table,
            row.where(guard),
            columns=names,
            keys=[table.c.account_scope, table.c.key],
            whole_row=True,
        )

        def insert(key: str, refuse: str) -> Any:
            params = {"key": key, "amount": 5, "currency": "usd", "account_scope": ""}
            with state.unit_of_work(session):
                return insert_loading(session, Transaction, statement, {**params, "refuse": refuse})

        won = insert("ch_rt_sel", refuse="eur")
        assert won is not None and as_loaded(won) == fresh(state, "ch_rt_sel")
        assert insert("ch_rt_sel", refuse="eur") is None  # the key is taken
        assert insert("ch_rt_sel_2", refuse="usd") is None  # the guard holds
        assert fresh(state, "ch_rt_sel")["id"] == won.id


# --- the isolation level on a pooled connection --------------------------------------------


@pytest.fixture
def client(app: Flask) -> Iterator[Any]:
    yield app.test_client()


def post(client: Any, type: str, obj: dict[str, Any]) -> None:
    assert testing.post_event(client, testing.event(type, obj)).status_code == 200


def levels_seen(app: Flask, state: State) -> tuple[str, str]:
    """(the host's session level, the level a host transaction runs at), read by the host
    on the app's pooled connection."""
    from .test_mysql import transaction_level

    with app.app_context():
        try:
            session = state.db.session
            level = session.scalar(sa.text("SELECT @@session.tx_isolation"))
            seen = transaction_level(app, session, state.models.Customer.__table__)
        finally:
            state.db.session.remove()
    return level, seen


def test_the_host_gets_its_level_back_on_the_connection_our_events_used(
    app: Flask, client: Any
) -> None:
    state = get_state(app)
    post(client, "charge.succeeded", testing.charge("ch_iso_1", customer=None))
    assert levels_seen(app, state) == ("REPEATABLE-READ", "REPEATABLE-READ")
    # And again after two events in a row, the second one reusing the level it found.
    post(client, "charge.succeeded", testing.charge("ch_iso_2", customer=None))
    post(client, "charge.succeeded", testing.charge("ch_iso_3", customer=None))
    assert levels_seen(app, state) == ("REPEATABLE-READ", "REPEATABLE-READ")


def test_our_events_run_at_read_committed_setting_it_once_per_connection(
    app: Flask, client: Any
) -> None:
    from .test_mysql import transaction_level

    state = get_state(app)
    seen: list[str] = []

    @state.extension.handler("checkout.session.completed")
    def handler(event: dict[str, Any]) -> None:
        seen.append(transaction_level(app, state.db.session, state.models.Customer.__table__))

    with app.app_context():
        sent = statements(state.db.engine)

    def completed(number: int) -> None:
        session = {"id": f"cs_iso_{number}", "object": "checkout.session"}
        post(client, "checkout.session.completed", session)

    completed(1)
    completed(2)
    levels_seen(app, state)  # the host's turn on the connection in between
    completed(3)
    assert seen == ["READ-COMMITTED"] * 3
    isolation = [s for s in sent if s.startswith("SET") and "isolation" in s.lower()]
    # Set when our first event took the connection, and again after the host's turn.
    assert len(isolation) == 2 and all("SESSION.TX_ISOLATION" in s.upper() for s in isolation)


def test_our_read_before_an_event_leaves_the_level_as_it_finds_it(app: Flask, client: Any) -> None:
    # The read that spares Stripe calls is ours too: it neither restores the host's level
    # (which the event right after would set again) nor sets ours.
    state = get_state(app)
    post(client, "charge.succeeded", testing.charge("ch_iso_r", customer=None))
    with app.app_context():
        sent = statements(state.db.engine)
        session = state.db.session()
        with state.unit_of_work.read(session):
            level = session.scalar(sa.text("SELECT @@session.tx_isolation"))
        state.db.session.remove()
    assert level == "READ-COMMITTED" and len(sent) == 1
    post(client, "charge.succeeded", testing.charge("ch_iso_r2", customer=None))
    assert not [s for s in sent if s.startswith("SET")]
    assert levels_seen(app, state) == ("REPEATABLE-READ", "REPEATABLE-READ")


@pytest.mark.parametrize("host_level", ["SERIALIZABLE", "READ UNCOMMITTED"])
def test_a_host_engine_level_is_given_back_too(host_level: str) -> None:
    app = create_app(
        use_mariadb(),
        SQLALCHEMY_ENGINE_OPTIONS={
            "pool_size": 1,
            "max_overflow": 0,
            "isolation_level": host_level,
        },
    )
    state = get_state(app)
    with app.app_context():
        state.db.drop_all()
        state.db.create_all()
    try:
        client = app.test_client()
        post(client, "charge.succeeded", testing.charge("ch_iso_h", customer=None))
        with app.app_context():
            level = state.db.session.scalar(sa.text("SELECT @@session.tx_isolation"))
            state.db.session.remove()
        assert level == host_level.replace(" ", "-")
    finally:
        with app.app_context():
            state.db.session.remove()
            state.db.drop_all()
            state.db.engine.dispose()


def test_a_host_transaction_already_open_keeps_its_level(app: Flask) -> None:
    # The host read first: its transaction (REPEATABLE READ, a snapshot taken) is open on
    # the connection when the extension writes in it. Its level stands, for it and after.
    from .test_mysql import transaction_level

    state = get_state(app)
    with app.app_context():
        session = state.db.session
        session.scalar(sa.select(sa.func.count()).select_from(state.models.Customer.__table__))
        state.extension.create_customer("host-open", "host-open@example.com", partner_key="p")
        level = session.scalar(sa.text("SELECT @@session.tx_isolation"))
        assert level == "REPEATABLE-READ"
        session.remove()
    assert levels_seen(app, state) == ("REPEATABLE-READ", "REPEATABLE-READ")
    with app.app_context():
        assert transaction_level(app, state.db.session, state.models.Customer.__table__) == (
            "REPEATABLE-READ"
        )
        state.db.session.remove()


# --- MySQL 8's forms, still run ---------------------------------------------------------------


def test_mysql_forms_still_work_with_mariadb_extras_switched_off(app: Flask, client: Any) -> None:
    # MySQL 8 is not on the test machine: its statements (SET TRANSACTION per transaction,
    # the insert id then a SELECT, no RETURNING) run here on MariaDB with SQLAlchemy told
    # the server has none of MariaDB's extras.
    state = get_state(app)
    with app.app_context():
        engine = state.db.engine
        with engine.connect():
            pass  # the dialect reads the server's version on the first connection
        dialect: Any = engine.dialect
        dialect.is_mariadb = False
        dialect.insert_returning = dialect.delete_returning = False
        sent = statements(engine)
    customer = testing.customer("cus_my", email="my@example.com", metadata={"customer_key": "my"})
    customer["metadata"]["partner_key"] = "p1"
    post(client, "customer.created", customer)
    post(client, "charge.succeeded", testing.charge("ch_my", customer="cus_my", amount=700))
    post(client, "charge.updated", testing.charge("ch_my", customer="cus_my", amount=700))
    refunded = testing.charge("ch_my", customer="cus_my", amount=700, amount_refunded=700)
    post(client, "charge.refunded", refunded)
    assert not [s for s in sent if "RETURNING" in s.upper() or "tx_isolation" in s]
    assert any(s.startswith("SET TRANSACTION ISOLATION LEVEL READ COMMITTED") for s in sent)
    with app.app_context():
        Transaction = state.models.Transaction
        (row,) = state.db.session.scalars(sa.select(Transaction)).all()
        assert (row.key, row.amount, row.deleted_reason) == ("ch_my", 700, "refund")
        assert row.customer.customer_key == "my"
        state.db.session.remove()
