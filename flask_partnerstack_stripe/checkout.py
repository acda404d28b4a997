"""``checkout.session.completed``: Checkout and Payment Links name the customer and partner.

A session's ``client_reference_id`` and ``metadata`` never reach its charge or invoice,
so the session itself links its Stripe customer to the host's customer; its payments
then follow by Stripe customer id (or by email, for guest sessions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import customers, locks, signals
from .customers import Party
from .readers import customer_key_of, name_of, partner_key_of
from .receiver import EventContext, Ignored
from .referral import decode_partner_key
from .tracking import _attach_orphans, _take_stripe_id
from .values import CLIENT_REFERENCE_LENGTH, mapping, normal_email, object_id, text

#: A ``client_reference_id`` of this form carries a ``ps_partner_key`` value (Payment Links).
PARTNER_REFERENCE = "ps_"


@dataclass(frozen=True)
class SessionValues:
    """What the rule reads from a Checkout Session, each value through its reader."""

    email: str | None
    reference: str | None
    customer_key: str | None
    partner_key: str | None
    stripe_customer_id: str | None
    name: str | None


def session_values(obj: dict[str, Any]) -> SessionValues:
    details = mapping(obj.get("customer_details"))
    return SessionValues(
        email=(
            normal_email(details.get("email"), field="customer_details.email")
            or normal_email(obj.get("customer_email"), field="customer_email")
        ),
        reference=text(
            obj.get("client_reference_id"), CLIENT_REFERENCE_LENGTH, field="client_reference_id"
        ),
        customer_key=customer_key_of(obj),
        partner_key=partner_key_of(obj),
        stripe_customer_id=object_id(obj.get("customer"), field="customer"),
        name=name_of(details),
    )


def check_session(obj: dict[str, Any], event_type: str) -> None:
    """The values ``checkout.session.completed`` reads (see ``rules.check_values``)."""
    session_values(obj)


def checkout_completed(context: EventContext) -> None:
    """Find or create the session's customer, link its Stripe id, attribute its partner.

    ``client_reference_id`` (else ``metadata.customer_key``) is the customer key and
    ``metadata.partner_key`` the partner. A ``client_reference_id`` of the form
    ``ps_<ps_partner_key value>`` names the partner instead, for a customer keyed by
    the session's email: a Payment Link carries no metadata from the host. That email is
    typed by whoever pays, so such a session only creates the customer: an existing one
    it finds keeps its partner and its Stripe customer. Even one already linked to the
    session's Stripe customer: that link may have come from the same typed email (a
    charge's billing email found it first).
    """
    values = session_values(context.object)
    email, reference = values.email, values.reference
    customer_key, partner_key = values.customer_key, values.partner_key
    typed = False  # the customer is named only by the email typed in Checkout
    if reference is not None and reference.startswith(PARTNER_REFERENCE):
        try:
            partner_key = partner_key or decode_partner_key(reference[len(PARTNER_REFERENCE) :])
        except ValueError:
            raise Ignored(
                f"The session's client_reference_id {reference!r} is not ps_ followed by a "
                "ps_partner_key value."
            ) from None
        typed = customer_key is None
        customer_key = customer_key or email
    elif reference is not None:
        customer_key = reference
    party = Party(
        stripe_account_id=context.stripe_account_id,
        livemode=context.livemode,
        stripe_customer_id=values.stripe_customer_id,
        customer_key=customer_key,
        email=email,
    )
    if not (party.customer_key or party.stripe_customer_id):
        raise Ignored("The session names no customer key and no Stripe customer.")
    session, models = context.session, context.models
    locks.lock(session, *locks.party_lock_names(party))
    match_email = context.settings.match_email
    customer = customers.find_customer(session, models, party, match_email=match_email)
    if customer is not None and not typed and _another_customers_email(customer, party):
        customer = None
    if customer is None:
        if not (party.customer_key and partner_key):
            raise Ignored(
                "The session matches no known customer and names no customer key and "
                "partner key to create one."
            )
        customer, created = customers.create_customer(
            session, models, party, partner_key=partner_key, name=values.name
        )
        if created:
            context.notify(signals.customer_created, customer=customer)
            _attach_orphans(context, customer, created=True)
            return None
    if typed:
        raise Ignored(
            "A ps_ reference attributes only a customer it creates: the existing customer "
            "found by the email typed in Checkout keeps its partner and Stripe customer."
        )
    if not _link(context, customer, party, partner_key, values.name):
        raise Ignored("The session's customer is already linked and attributed.")
    context.notify(signals.customer_updated, customer=customer)
    _attach_orphans(context, customer)
    return None


def _another_customers_email(customer: Any, party: Party) -> bool:
    """Whether ``customer`` was found by the session's email alone while the session names
    another customer key: the key says who the buyer is (``client_reference_id`` is the
    customer key), and an email two customers share, or one typed in Checkout, does not
    merge them."""
    return (
        party.customer_key is not None
        and customer.customer_key not in (None, party.customer_key)
        and (party.stripe_customer_id is None
             or customer.stripe_customer_id != party.stripe_customer_id)
    )  # fmt: skip


def _link(context: EventContext, customer: Any, party: Party, partner_key: Any, name: Any) -> bool:
    """Fill in what the customer lacks; a Stripe id or partner already set is kept."""
    changed = False
    if party.stripe_customer_id and customer.stripe_customer_id is None:
        _take_stripe_id(context, party, customer)
        customer.stripe_customer_id = party.stripe_customer_id
        changed = True
    for field, value in (("partner_key", partner_key), ("email", party.email), ("name", name)):
        if value is not None and getattr(customer, field) is None:
            setattr(customer, field, value)
            changed = True
    context.session.flush()
    return changed
