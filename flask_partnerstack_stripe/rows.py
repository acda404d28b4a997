"""ORM instances from the rows Core statements read or wrote, and Core writes of their
changes: what the ORM gives, without the cost of its statements on the hot path."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from .statements import cached_statement


def loaded(session: Session, model: Any, values: Sequence[Any], *, attach: bool = True) -> Any:
    """The ``model`` instance, in ``session``, of a row a Core statement just read or wrote.

    What an ORM query gives (the instance the session holds, refreshed, or a new
    persistent one), without the ORM's statement: a Core ``INSERT ... RETURNING`` or
    ``SELECT`` costs a third to a half of the ORM-enabled one. ``values``: every column
    of the model's table, in the table's order.

    A model with ``load`` listeners (an ``@orm.reconstructor``, say) is read with the
    ORM, so that they run. An instance the session holds keeps what the host changed
    and has not flushed yet; its relationships are read again when next used.

    ``attach=False``, for a row the caller only reads (its writes are Core statements):
    a new instance joins the session only if a signal with receivers carries it
    (:func:`attach`, before the commit). Adding it, and the session keeping it through
    the commit, cost a few percent of an event, and most apps connect no receiver to
    most signals. Until then the session's ``info`` keeps it aside, so that loading the
    row again in the transaction gives the same instance. Once a host's code may run in
    the transaction (:func:`attach_all`), every instance joins the session at once.
    """
    attach = attach or bool(session.info.get(_ATTACHING))
    mapper = sa.inspect(model)
    row = dict(zip(column_keys(model), values, strict=True))
    identity = mapper.identity_key_from_primary_key([row["id"]])
    instance = session.identity_map.get(identity)
    if instance is not None:
        _refresh(session, instance, row)
        return instance
    waiting: dict[Any, Any] = {} if attach else session.info.setdefault(_WAITING, {})
    instance = waiting.get(identity)
    if instance is not None:
        sa.inspect(instance).dict.update(row)  # in no session: no history to keep
        return instance
    if mapper.class_manager.dispatch.load:
        return session.get(model, row["id"], populate_existing=True)
    # As a query loads it: not through the model's __init__ (a host's may want
    # arguments), its attributes set without history, then given its identity.
    instance = mapper.class_manager.new_instance()
    sa.inspect(instance).dict.update(row)
    if attach:
        make_transient_to_detached(instance)
        session.add(instance)
    else:
        waiting[identity] = instance
    return instance


def attach(session: Session, notifications: Iterable[tuple[Any, dict[str, Any]]]) -> None:
    """The instances :func:`loaded` kept aside join ``session`` where a signal with
    receivers carries them; in the transaction, before its commit (as a query's would).

    Where the session holds an instance of that row by then, that one takes the
    argument's place as it is: the ORM loaded it after the kept one was made (else
    :func:`loaded` would have given it), so it is as new. Where the session has
    ``before_commit`` or ``after_commit`` hooks, the host's code runs in the commit:
    every kept instance joins (:func:`attach_all`).
    """
    waiting: dict[Any, Any] = session.info.get(_WAITING) or {}
    if not waiting:
        return
    if session.dispatch.before_commit or session.dispatch.after_commit:
        attach_all(session)
    kept = {id(instance): identity for identity, instance in waiting.items()}
    for signal, kwargs in notifications:
        if not signal.receivers:
            continue
        for key, value in kwargs.items():
            identity = kept.get(id(value))
            if identity is None:
                continue
            held = session.identity_map.get(identity)
            if held is None:
                make_transient_to_detached(value)
                session.add(value)
                waiting.pop(identity, None)
            elif held is not value:
                kwargs[key] = held


def attach_all(session: Session) -> None:
    """Every instance :func:`loaded` kept aside joins ``session``, and every one it makes
    from now on until the transaction ends: a host's code is about to run in it (a
    handler, or hooks of the commit), which may read or write those rows through the ORM
    and must meet the very instances the signals carry, as a query's would be.

    One whose row the session holds another instance of stays aside, for :func:`attach`
    to put the session's in its place in the signals.
    """
    session.info[_ATTACHING] = True
    waiting: dict[Any, Any] = session.info.get(_WAITING) or {}
    for identity, instance in list(waiting.items()):
        if session.identity_map.get(identity) is None:
            make_transient_to_detached(instance)
            session.add(instance)
            del waiting[identity]


def forget_waiting(session: Session) -> None:
    """Drop the instances :func:`loaded` kept aside: their transaction has ended."""
    session.info.pop(_WAITING, None)
    session.info.pop(_ATTACHING, None)


def _refresh(session: Session, instance: Any, row: dict[str, Any]) -> None:
    """Give ``instance``, which ``session`` holds, the row's values but what the host
    changed and has not flushed yet; its relationships are read again when next used."""
    state = sa.inspect(instance)
    for key, value in row.items():
        if not state.attrs[key].history.has_changes():
            set_committed_value(instance, key, value)
    if state.mapper.relationships:
        session.expire(instance, list(state.mapper.relationships.keys()))


#: ``session.info``'s keys: the instances :func:`loaded` keeps aside, by identity; and
#: that it keeps none aside any more in this transaction (:func:`attach_all`).
_WAITING = "partnerstack_stripe.waiting"
_ATTACHING = "partnerstack_stripe.attaching"


def write_changes(session: Session, table: Any, stored: dict[str, Any], row: Any) -> None:
    """One ``UPDATE`` of the columns whose value in ``row`` (its attributes) differs from
    ``stored`` (what was read), by the row's id; none when nothing changed."""
    changed = {key: value for key, value in vars(row).items() if value != stored[key]}
    if not changed:
        return
    columns = tuple(changed)
    statement = cached_statement(
        (table, "write changes", columns),
        lambda: (
            sa.update(table)
            .where(table.c.id == sa.bindparam("b_id"))
            .values({name: sa.bindparam(name) for name in columns})
        ),
    )
    session.connection().execute(statement, {**changed, "b_id": stored["id"]})


def column_keys(model: Any) -> list[str]:
    """The attribute names of ``model``'s table columns, in the table's order."""

    def build() -> list[str]:
        sa.orm.configure_mappers()  # a no-op once done; the first query would do it
        mapper = sa.inspect(model)
        return [mapper.get_property_by_column(column).key for column in mapper.local_table.columns]

    keys: list[str] = cached_statement((model, "column keys"), build)
    return keys
