"""PartnerStack's tracking rules: which Stripe event does what to customers and transactions.

Plain functions of an :class:`EventContext` (the event and an open session); no
Flask. Each rule decides from the Stripe object itself, not only from the event
type, so events can arrive in any order and any number of times.
"""

from __future__ import annotations

from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.orm.attributes import set_committed_value

from . import commissions, customers, locks, payments, signals
from .accounts import uninstall
from .customers import Party
from .database import is_mysql
from .invoices import invoice_of_charge
from .models import utcnow
from .payments import Facts, Payment
from .readers import (
    charge_facts,
    customer_key_of,
    email_of,
    id_of,
    invoice_amount,
    invoice_metadata,
    name_of,
    partner_key_of,
    product_key_of,
)
from .receiver import EventContext, Ignored
from .statements import cached_statement
from .values import amount, currency, object_id


def party_of(context: EventContext, obj: dict[str, Any], stripe_customer_id: Any) -> Party:
    return Party(
        stripe_account_id=context.stripe_account_id,
        livemode=context.livemode,
        stripe_customer_id=object_id(stripe_customer_id, field="customer"),
        customer_key=customer_key_of(obj),
        email=email_of(obj),
    )


def transaction_source(context: EventContext) -> str:
    account = context.account
    if account is not None and account.transaction_source:
        return str(account.transaction_source)
    return context.settings.transaction_source


# --- customers -------------------------------------------------------------------------


def customer_lock_names(context: EventContext) -> list[str | None]:
    """The locks :func:`customer_upserted` begins with (the claim takes them on PostgreSQL)."""
    obj = context.object
    return locks.party_lock_names(party_of(context, obj, obj.get("id")))


def customer_upserted(context: EventContext) -> None:
    """``customer.created`` / ``customer.updated``: create, match and sync the customer."""
    obj = context.object
    party = party_of(context, obj, obj.get("id"))
    if party.stripe_customer_id is None:
        raise Ignored("The customer object has no id.")
    names = locks.party_lock_names(party)
    if not context.holds(names):
        locks.lock(context.session, *names)
    models, session = context.models, context.session
    match_email = context.settings.match_email
    partner_key = partner_key_of(obj)
    new_customer = {
        "partner_key": partner_key, "name": name_of(obj), "event_created": context.event["created"],
    }  # fmt: skip
    if party.customer_key and partner_key and not is_mysql(session):
        # Usually a new customer: inserted at once unless one is known (one statement).
        # Not on MySQL/MariaDB: there an INSERT ... SELECT holds the table's AUTO-INC lock
        # while it waits, and a duplicate key takes a next-key lock; find first there.
        created = customers.insert_customer(
            session, models, party, **new_customer, unless_email=match_email, attach=match_email
        )
        if created is not None:
            context.notify(signals.customer_created, customer=created.customer)
            _attach_orphans(context, created.customer, created.attached, created=True)
            return None
    customer = customers.find_customer(session, models, party, match_email=match_email)
    if customer is None:
        if not (party.customer_key and partner_key):
            raise Ignored(
                "The customer matches no known customer and its metadata has no "
                "customer_key and partner_key to create one." + _mode_hint(context)
            )
        # MySQL/MariaDB; or what kept the insert above out is gone (a customer.deleted
        # freed the Stripe id meanwhile, say).
        customer, created_now = customers.create_customer(session, models, party, **new_customer)
        if created_now:
            context.notify(signals.customer_created, customer=customer)
            _attach_orphans(context, customer, created=True)
            return None

    if _sync_customer(context, customer, party, obj, partner_key):
        context.notify(signals.customer_updated, customer=customer)
        _attach_orphans(context, customer)
    if customer.stripe_customer_id != party.stripe_customer_id and (
        customer.customer_key == party.customer_key
    ):
        _attach_payments_of(context, party, customer)
    return None


def _attach_payments_of(context: EventContext, party: Party, customer: Any) -> None:
    """An older event whose metadata names the customer's key, for a Stripe customer the
    customer no longer holds (a replacement linked by a newer event): its payments
    waiting without a customer are still this customer's, whatever order they came in."""
    attached = customers.attach_orphans(
        context.session, context.models, customer, match_email=False,
        of_stripe_id=party.stripe_customer_id,
    )  # fmt: skip
    for transaction in attached:
        context.notify(signals.transaction_updated, transaction=transaction)
    if attached:
        commissions.follow_customer_in(context, customer, attached=True)


def _mode_hint(context: EventContext) -> str:
    """Why a live customer may match nobody: the app records signups in test mode."""
    if context.livemode and not context.settings.livemode:
        return (
            " This app records signups in test mode (PARTNERSTACK_STRIPE_LIVEMODE is not"
            " True), and live events only match live customers."
        )
    return ""


def _sync_customer(
    context: EventContext, customer: Any, party: Party, obj: dict[str, Any], partner_key: Any
) -> bool:
    """Copy Stripe's view onto ``customer``; True if anything changed.

    An event older than the last one applied only fills in what is still empty, and
    never takes the Stripe id from another customer: a newer event moved it there.
    An existing partner attribution is never replaced: the first partner wins.
    """
    newer = (customer.stripe_event_created or 0) <= context.event["created"]
    wanted = {
        "stripe_customer_id": party.stripe_customer_id,
        "email": party.email,
        "name": name_of(obj),
        "partner_key": partner_key if customer.partner_key is None else None,
    }
    changed = False
    for field, value in wanted.items():
        current = getattr(customer, field)
        if value is None or value == current or (current is not None and not newer):
            continue
        if field == "stripe_customer_id":
            if newer:
                _take_stripe_id(context, party, customer)
            elif _held_by_another(context, party, customer):
                continue  # an older event never takes it; nobody else holds it otherwise
        setattr(customer, field, value)
        changed = True
    if newer:
        customer.stripe_event_created = context.event["created"]
    context.session.flush()
    return changed


def _held_by_another(context: EventContext, party: Party, customer: Any) -> bool:
    """Whether a customer other than ``customer`` holds ``party``'s Stripe id."""
    holder = customers.find_customer_by_stripe_id(context.session, context.models, party)
    return holder is not None and holder.id != customer.id


def _attach_orphans(
    context: EventContext, customer: Any, attached: Any = None, *, created: bool = False
) -> None:
    """Give ``customer`` its orphans (unless ``attached`` says which it was given already).

    ``created``: the customer is new in this transaction, so those orphans are all its
    payments.
    """
    if attached is None:
        attached = customers.attach_orphans(
            context.session, context.models, customer, match_email=context.settings.match_email
        )
    for transaction in attached:
        context.notify(signals.transaction_updated, transaction=transaction)
    # Its payments' commissions: the orphans just attached, or all if it just got a partner.
    commissions.follow_customer_in(
        context, customer, attached if created else None, attached=bool(attached)
    )


def customer_deleted(context: EventContext) -> None:
    """``customer.deleted``: unlink the Stripe id; the customer and its transactions stay."""
    session, models = context.session, context.models
    party = party_of(context, context.object, context.object.get("id"))
    customer = customers.find_customer_by_stripe_id(session, models, party)
    # Unlinked only where it is still linked, in the UPDATE's own condition: a customer
    # event giving the customer another Stripe id meanwhile (a replacement customer)
    # keeps it; this takes no customer lock, and its read above may predate that commit.
    if customer is None or not customers.unlink_stripe_id(session, models, party):
        raise Ignored("The deleted Stripe customer is not linked to a known customer.")
    set_committed_value(customer, "stripe_customer_id", None)
    context.notify(signals.customer_updated, customer=customer)
    return None


# --- payments --------------------------------------------------------------------------

ZERO_AMOUNT = "zero amount: a payment of 0 (a trial, a 100% coupon) earns nothing"
CREDIT_INVOICE = "zero amount: a credit invoice (its total is below 0) paid nothing"


def _payment(key: str, party: Party, obj: dict[str, Any]) -> Payment:
    return Payment(
        key=key,
        party=party,
        currency=currency(obj.get("currency")),
        product_key=product_key_of(obj),
        names_product=True,
    )


def charge_changed(context: EventContext) -> None:
    """``charge.succeeded`` / ``.captured`` / ``.updated`` / ``.refunded`` / ``.failed``.

    One rule for all five: the charge object says whether it settled, how much was
    captured and refunded, and whether it failed, whatever the event type.
    """
    obj = context.object
    key, paid = id_of(obj), amount(obj.get("amount"))
    if key is None or paid is None:
        raise Ignored("The charge has no id or no valid amount.")
    party = party_of(context, obj, obj.get("customer"))
    facts = charge_facts(obj, paid, context.event["type"], event_created(context))

    if transaction_source(context) == "invoice":
        # Invoice mode: the invoice records; its charges only bring refunds. A failed
        # attempt deletes nothing, since a retry may still pay the invoice.
        if facts.refunded == 0 and not facts.refunds:
            if facts.failed:
                raise Ignored(
                    "Invoice mode: a failed payment attempt deletes nothing (a retry may "
                    "still pay the invoice)."
                )
            raise Ignored("Invoice mode: charges are recorded through their invoice.")
        invoice_id = invoice_of_charge(context, obj)
        if invoice_id is None:
            _unmatched(context, key)
        refund_only = Facts(
            nominal=paid,
            refunded=facts.refunded,
            refunds=facts.refunds,
            charge_at=facts.charge_at,
            charged=facts.gross if facts.gross is not None else paid,
            seen_at=facts.seen_at,
        )
        payment = Payment(key=invoice_id, party=party, currency=currency(obj.get("currency")))
        return settle(context, payment, refund_only)

    if facts.gross == 0:
        raise Ignored(ZERO_AMOUNT)
    if facts.gross is None and not (facts.failed or facts.refunded or facts.refunds):
        raise Ignored("The charge has not succeeded and been captured yet.")
    return settle(context, _payment(key, party, obj), facts, creates=obj)


def event_created(context: EventContext) -> int | None:
    """The event's ``created`` (Unix seconds): when what its object shows was so."""
    created = context.event.get("created")
    return created if isinstance(created, int) and not isinstance(created, bool) else None


def _unmatched(context: EventContext, charge_id: str) -> NoReturn:
    settings = context.settings
    if settings.api_key_for(context.livemode) is not None:
        hint = "Stripe's InvoicePayment API names no invoice for it"
    else:
        # The key that would look it up: a test-mode event needs a test key (a live one
        # cannot read it), which goes in TEST_API_KEY when API_KEY holds the live key.
        setting = "API_KEY"
        if not context.livemode and settings.api_key is not None:
            setting = "TEST_API_KEY"
        hint = f"set PARTNERSTACK_STRIPE_{setting} to look it up, then replay this event"
    raise Ignored(
        f"Unmatched refund: the charge {charge_id} could not be linked to an invoice ({hint}).",
        keep=True,
    )


def invoice_paid(context: EventContext) -> None:
    """``invoice.payment_succeeded`` / ``invoice.paid``: record the invoice (invoice mode only)."""
    obj = context.object
    if transaction_source(context) != "invoice":
        raise Ignored("Charge mode: payments are recorded from their charges.")
    field = context.settings.invoice_amount
    key, paid = id_of(obj), invoice_amount(obj, field)
    if key is None or paid is None:
        raise Ignored(f"The invoice has no id or no valid {field}.")
    total = invoice_amount(obj, "total")
    if paid == 0 or total == 0:
        raise Ignored(ZERO_AMOUNT)
    if paid < 0 or (total is not None and total < 0):
        raise Ignored(CREDIT_INVOICE)
    obj = {**obj, "metadata": invoice_metadata(obj)}
    party = party_of(context, obj, obj.get("customer"))
    # Refunds come in what the payer was charged (tax and discounts included).
    charged = invoice_amount(obj, "amount_paid") or total
    facts = Facts(gross=paid, nominal=paid, charged=charged)
    return settle(context, _payment(key, party, obj), facts, creates=obj)


def invoice_failed(context: EventContext) -> None:
    """``invoice.payment_failed``: an attempt failed; Stripe retries, so nothing is deleted."""
    raise Ignored("A failed payment attempt deletes nothing: a retry may still pay the invoice.")


#: The events that usually record their payment for the first time. Any other event that
#: settles a payment (an update, a refund, a dispute) usually finds it recorded, and locks
#: it before trying to insert it: a round trip less (``payments.settle_payment``).
FIRST_RECORDS = frozenset(
    {"charge.succeeded", "charge.captured", "charge.failed", "invoice.payment_succeeded",
     "invoice.paid", "checkout.session.completed"}
)  # fmt: skip


def settle(
    context: EventContext, payment: Payment, facts: Facts, creates: dict[str, Any] | None = None
) -> None:
    """Add ``facts`` to the payment's transaction and send the signal the change calls for.

    ``creates``: the charge or invoice object whose metadata may create the customer
    (the e-commerce case); refund and dispute objects name no customer.
    """
    session, models = context.session, context.models
    party = payment.party
    prorate = context.settings.refund_policy == "prorate"
    expect_known = context.event["type"] not in FIRST_RECORDS
    partner_key = partner_key_of(creates) if creates is not None else None
    may_create = creates is not None and bool(party.customer_key and partner_key)
    payer = customers.payer_routes(party, match_email=context.settings.match_email, payment=True)
    if payer and not (expect_known or may_create) and payments.records_first(session):
        # Usually a known customer's new payment: one INSERT finds its customer too.
        first = payments.record_first(session, models, payment, facts, prorate=prorate, payer=payer)
        if first is not None:
            return _recorded_first(context, party, first)
        expect_known = True  # recorded already: lock it first
    elif payer and expect_known and not may_create:
        # Usually an update or a refund of a payment recorded with its customer, which
        # the look-up would not change: none then. Otherwise nothing is locked yet, and
        # the look-up below comes first.
        settled = payments.settle_attached(
            session, models, payment, facts, prorate=prorate, payer=payer
        )
        if settled is not None:
            return _settled(context, *settled)

    found = _find_payer(context, party, load=may_create)
    customer_id = found.id if found is not None else None
    if found is None:
        # A payment of a Stripe customer nobody holds any more (customer.deleted) is the
        # customer's its earlier payments went to, before its own metadata may create one.
        customer_id = customers.former_owner(session, models, party)
    if creates is not None and may_create and customer_id is None:
        # The e-commerce case: no signup tracking, the charge names customer and partner.
        customer, created = customers.create_customer(
            session, models, party, partner_key=partner_key, name=name_of(creates)
        )
        customer_id = customer.id
        if created:
            context.notify(signals.customer_created, customer=customer)
            _attach_orphans(context, customer, created=True)
        else:  # created by another event meanwhile, perhaps without a partner
            _give_partner(context, party, customer, partner_key)
    elif found is not None:
        if may_create:
            _give_partner(context, party, found, partner_key)
        if party.stripe_customer_id and not found.stripe_customer_id:
            _link_stripe_id(context, party, found.id)

    change, row = payments.settle_payment(
        session, models, payment, customer_id, facts, prorate=prorate, expect_known=expect_known
    )
    _settled(context, change, row)


def _recorded_first(context: EventContext, party: Party, first: payments.First) -> None:
    """The rest of :func:`settle` for a payment :func:`payments.record_first` recorded."""
    session, models, row = context.session, context.models, first.row
    if first.locked:
        # Nobody was known, and record_first took the customer locks before writing the
        # row: a customer committed meanwhile is seen now (or will attach this payment).
        found = customers.find_customer(
            session, models, party,
            match_email=context.settings.match_email, load=False, payment=True,
        )  # fmt: skip
        if found is not None:
            row = payments.give_customer(session, models, row, found.id)
            # Its own signals first (transaction_recorded, then its commission); linking
            # then attaches the other orphans and follows the customer's commissions.
            _settled(context, first.change, row, new=True)
            if party.stripe_customer_id and not found.stripe_customer_id:
                _link_stripe_id(context, party, found.id)
            return
    if row.customer_id is None:
        former = customers.former_owner(session, models, party)
        if former is not None:
            row = payments.give_customer(session, models, row, former)
    _settled(context, first.change, row, new=True)


def _link_stripe_id(context: EventContext, party: Party, customer_id: int) -> None:
    """The customer was found by key or email: the payment tells us its Stripe id too.

    Under the customer locks, as a customer event links: a payment naming only that Stripe
    id, recorded at this moment without a customer, then waits and finds it linked.
    """
    session, models = context.session, context.models
    locks.lock(session, *locks.party_lock_names(party))
    # Read again under the locks: another payment of the same email may have linked its
    # own Stripe customer since the look-up, and a payment never moves a customer from it.
    customer = session.get(models.Customer, customer_id, populate_existing=True)
    assert customer is not None, "found in this transaction, under its lock"
    if customer.stripe_customer_id not in (None, party.stripe_customer_id):
        return
    _take_stripe_id(context, party, customer)
    customer.stripe_customer_id = party.stripe_customer_id
    session.flush()
    context.notify(signals.customer_updated, customer=customer)
    _attach_orphans(context, customer)


def _take_stripe_id(context: EventContext, party: Party, customer: Any) -> None:
    """Free ``party``'s Stripe id for ``customer``; the customer that loses it is updated
    too, and its receivers are told."""
    former = customers.take_stripe_id(context.session, context.models, party, customer)
    if former is not None:
        context.notify(signals.customer_updated, customer=former)


def _give_partner(context: EventContext, party: Party, customer: Any, partner_key: Any) -> None:
    """A payment whose metadata names its customer's key and a partner gives that
    customer the partner if it has none yet (a signup recorded without one): the first
    partner wins whichever came first, the signup or the payment.

    Only the customer the key names: one found by its Stripe id or email under another
    key is not the one the metadata speaks of. Under the customer locks, as a customer
    event gives a partner; and only where it still has none, in the ``UPDATE``'s own
    condition, since an event naming the customer another way holds other locks.
    """
    if customer.partner_key is not None or customer.customer_key != party.customer_key:
        return  # usually: a repeat purchase of an attributed customer, nothing to lock
    session, models = context.session, context.models
    locks.lock(session, *locks.party_lock_names(party))
    table = models.Customer.__table__
    give = cached_statement(
        (table, "give partner"),
        lambda: (
            sa.update(table)
            .where(table.c.id == sa.bindparam("b_id"), table.c.partner_key.is_(None))
            .values(partner_key=sa.bindparam("b_partner_key"), updated_at=sa.bindparam("b_now"))
        ),
    )
    values = {"b_id": customer.id, "b_partner_key": partner_key, "b_now": utcnow()}
    if not session.connection().execute(give, values).rowcount:
        return  # another event gave it one meanwhile: the first partner wins
    customer = session.get(models.Customer, customer.id, populate_existing=True)
    context.notify(signals.customer_updated, customer=customer)
    _attach_orphans(context, customer)


def _settled(context: EventContext, change: str | None, row: Any, *, new: bool = False) -> None:
    """Send the signal a payment's change calls for; its commission follows it (which,
    once the payment was recorded, usually exists: locked first then). ``new``: this
    transaction inserted the row (it has no commission yet)."""
    if change == payments.RECORDED:
        context.notify(signals.transaction_recorded, transaction=row)
    elif change == payments.UPDATED:
        context.notify(signals.transaction_updated, transaction=row)
    elif change == payments.DELETED:
        context.notify(signals.transaction_deleted, transaction=row)
    if change is not None:
        expect_known = change != payments.RECORDED
        commissions.follow(context, row, expect_known=expect_known, new=new)


def _find_payer(context: EventContext, party: Party, *, load: bool = False) -> Any:
    """The id and Stripe id of the customer a payment names, if known (``load``: the
    whole customer, for a payment whose metadata may give it its partner).

    When none is known yet, the payment is about to be kept without a customer. The
    customer may be being created at this very moment: take the locks a customer
    event takes and look again, so that one of the two sees the other.
    """
    if not (party.stripe_customer_id or party.customer_key or party.email):
        return None  # a refund or dispute names nobody: its transaction knows the customer
    match_email = context.settings.match_email
    found = customers.find_customer(
        context.session, context.models, party, match_email=match_email, load=load, payment=True
    )
    return found if found is not None else _find_payer_again(context, party, load=load)


def _find_payer_again(context: EventContext, party: Party, *, load: bool) -> Any:
    """Under the locks a customer event takes, the customer ``party`` names (or None)."""
    session, models = context.session, context.models
    if not locks.lock(session, *locks.party_lock_names(party)):
        return None  # SQLite: one writer at a time, so the first look was final
    match_email = context.settings.match_email
    return customers.find_customer(
        session, models, party, match_email=match_email, load=load, payment=True
    )


# --- accounts --------------------------------------------------------------------------


def account_deauthorized(context: EventContext) -> None:
    """``account.application.deauthorized``: the event's account, in the event's mode, is gone."""
    if context.stripe_account_id is None:
        raise Ignored("The deauthorization names no connected account.")
    account = uninstall(
        context.session, context.models, context.stripe_account_id, context.livemode
    )
    if account is not None:
        context.notify(signals.account_uninstalled, account=account)
    return None
