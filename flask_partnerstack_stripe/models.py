"""The tables the extension writes, as mixins the host can extend, and default models.

The host's own Flask-Migrate sees these tables because they are declared on the
host's ``db.Model``; the extension ships no migrations of its own.

Uniqueness lives in the database. SQL unique constraints treat NULLs as distinct,
so the public ``stripe_account_id`` (None for the platform's own account) is
mirrored into ``account_scope``, which is ``""`` for the platform and never NULL.
"""

from __future__ import annotations

import types
import weakref
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, declared_attr, mapped_column, relationship


def _string(length: int) -> sa.types.TypeEngine[str]:
    """A VARCHAR compared exactly, byte for byte, on every database.

    MySQL's and MariaDB's default collations compare case- and accent-insensitively
    ("Ä@x.com" = "a@x.com", "cus_A" = "cus_a"): ``utf8mb4_bin`` makes them compare
    as PostgreSQL and SQLite do. The extension folds emails itself (A-Z lowered), the
    same everywhere. 4 bytes a character: every index stays under InnoDB's 3072.
    """
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )


#: TEXT, which MySQL caps at 64 KiB: a Stripe event's payload may be longer.
_TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

#: ``WebhookEvent.status`` values: see :class:`.status.Status`.


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def account_scope(stripe_account_id: str | None) -> str:
    """The non-NULL key the unique constraints use for an account (``""`` for the platform)."""
    return stripe_account_id or ""


class CustomerMixin:
    """A customer of the host, attributed to a partner. Table ``partnerstack_customer``."""

    if TYPE_CHECKING:  # what declarative gives each model class
        __table__: ClassVar[sa.Table]

    @declared_attr.directive
    def __tablename__(cls) -> str:
        return "partnerstack_customer"

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        table = cls.__tablename__
        return (
            sa.UniqueConstraint(
                "account_scope", "livemode", "customer_key", name=f"uq_{table}_key"
            ),
            sa.UniqueConstraint(
                "account_scope", "livemode", "stripe_customer_id", name=f"uq_{table}_stripe_id"
            ),
            sa.Index(f"ix_{table}_email", "account_scope", "livemode", "email"),
        )

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Metadata values (Stripe allows 500 characters), Stripe ids (255), emails (320):
    #: stored whole; a longer value is refused, never cut (see ``values.py``).
    customer_key: Mapped[str] = mapped_column(_string(500))
    email: Mapped[str | None] = mapped_column(_string(320))
    name: Mapped[str | None] = mapped_column(_string(500))
    partner_key: Mapped[str | None] = mapped_column(_string(500))
    stripe_customer_id: Mapped[str | None] = mapped_column(_string(255))
    stripe_account_id: Mapped[str | None] = mapped_column(_string(255))
    account_scope: Mapped[str] = mapped_column(_string(255), default="")
    livemode: Mapped[bool] = mapped_column(default=False)
    #: ``created`` of the newest Stripe customer event applied, so an older one never wins.
    stripe_event_created: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    def __repr__(self) -> str:
        return f"<Customer {self.customer_key!r} partner={self.partner_key!r}>"


class TransactionMixin:
    """A payment (charge or invoice) credited to a customer. Table ``partnerstack_transaction``.

    Subclasses whose customer model has another class or table name set
    ``customer_model`` and ``customer_table``.
    """

    if TYPE_CHECKING:  # what declarative gives each model class
        __table__: ClassVar[sa.Table]

    customer_model: ClassVar[str] = "PartnerStackCustomer"
    customer_table: ClassVar[str] = "partnerstack_customer"

    @declared_attr.directive
    def __tablename__(cls) -> str:
        return "partnerstack_transaction"

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        table = cls.__tablename__
        # One index per way a payment names its customer, so attaching the payments
        # of a newly known customer reads a few rows, not the table.
        return (
            sa.UniqueConstraint("account_scope", "key", name=f"uq_{table}_key"),
            sa.Index(f"ix_{table}_customer_id", "customer_id"),
            sa.Index(f"ix_{table}_stripe_customer_id", "stripe_customer_id", "account_scope"),
            sa.Index(f"ix_{table}_customer_key", "customer_key", "account_scope"),
            sa.Index(f"ix_{table}_customer_email", "customer_email", "account_scope"),
        )

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(_string(255))

    @declared_attr
    def customer_id(cls) -> Mapped[int | None]:
        return mapped_column(sa.ForeignKey(f"{cls.customer_table}.id", ondelete="SET NULL"))

    @declared_attr
    def customer(cls) -> Mapped[Any]:
        return relationship(cls.customer_model)

    amount: Mapped[int] = mapped_column(sa.BigInteger)
    currency: Mapped[str] = mapped_column(_string(3))
    product_key: Mapped[str | None] = mapped_column(_string(500))
    stripe_account_id: Mapped[str | None] = mapped_column(_string(255))
    account_scope: Mapped[str] = mapped_column(_string(255), default="")
    livemode: Mapped[bool] = mapped_column(default=False)
    #: How the customer was named on the payment, kept to attach it once the customer is known.
    stripe_customer_id: Mapped[str | None] = mapped_column(_string(255))
    customer_key: Mapped[str | None] = mapped_column(_string(500))
    customer_email: Mapped[str | None] = mapped_column(_string(320))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    deleted_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    #: Why it does not stand: ``"refund"``, ``"failure"`` or ``"dispute"`` (None while it stands).
    deleted_reason: Mapped[str | None] = mapped_column(_string(16))
    #: What Stripe said about the payment, in any order; ``amount`` and ``deleted_*`` follow
    #: from these alone (see ``payments.settle_payment``), so the order of events never matters.
    #: The settled amount (captured, or the invoice's), None until a success shows it.
    gross_amount: Mapped[int | None] = mapped_column(sa.BigInteger)
    #: The refunded total (a released remainder excluded) the newest charge object showed:
    #: the one of the latest event (``charge_refunded_at``, the event's ``created``; the
    #: higher total at the same second). Stripe lowers it when a refund fails, so it
    #: already leaves out refunds that failed before it was taken.
    charge_refunded: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    charge_refunded_at: Mapped[int | None] = mapped_column(sa.BigInteger)
    #: What the payer was charged (the charge's captured amount, the invoice's
    #: ``amount_paid``), the unit refunds come in; None when the same as ``gross_amount``
    #: is all that is known. In invoice mode refunds are scaled from it to the invoice amount.
    charged_amount: Mapped[int | None] = mapped_column(sa.BigInteger)
    failed: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    dispute_lost: Mapped[bool] = mapped_column(default=False, server_default=sa.false())

    def __repr__(self) -> str:
        state = f" deleted ({self.deleted_reason})" if self.deleted_at else ""
        return f"<Transaction {self.key!r} {self.amount} {self.currency}{state}>"


class StripeAccountMixin:
    """A connected Stripe account, per mode. Table ``partnerstack_stripe_account``."""

    if TYPE_CHECKING:  # what declarative gives each model class
        __table__: ClassVar[sa.Table]

    @declared_attr.directive
    def __tablename__(cls) -> str:
        return "partnerstack_stripe_account"

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        table = cls.__tablename__
        return (
            sa.UniqueConstraint("stripe_account_id", "livemode", name=f"uq_{table}_account"),
            sa.UniqueConstraint("endpoint_id", name=f"uq_{table}_endpoint_id"),
        )

    id: Mapped[int] = mapped_column(primary_key=True)
    stripe_account_id: Mapped[str] = mapped_column(_string(255))
    livemode: Mapped[bool] = mapped_column(default=False)
    #: ``"charge"`` or ``"invoice"``; None follows ``PARTNERSTACK_STRIPE_TRANSACTION_SOURCE``.
    transaction_source: Mapped[str | None] = mapped_column(_string(16))
    installed_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    uninstalled_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    #: What the OAuth install granted. Tokens are secrets: never logged, never shown.
    scope: Mapped[str | None] = mapped_column(_string(255))
    access_token: Mapped[str | None] = mapped_column(_TEXT)
    refresh_token: Mapped[str | None] = mapped_column(_TEXT)
    #: A manual webhook endpoint: ``<prefix>/webhook/<endpoint_id>``, verified with its own secret.
    endpoint_id: Mapped[str | None] = mapped_column(_string(64))
    endpoint_secret: Mapped[str | None] = mapped_column(_string(255))

    def __repr__(self) -> str:
        mode = "live" if self.livemode else "test"
        return f"<StripeAccount {self.stripe_account_id} {mode}>"


class WebhookEventMixin:
    """Every verified Stripe event, stored once. Table ``partnerstack_webhook_event``."""

    if TYPE_CHECKING:  # what declarative gives each model class
        __table__: ClassVar[sa.Table]

    @declared_attr.directive
    def __tablename__(cls) -> str:
        return "partnerstack_webhook_event"

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        table = cls.__tablename__
        return (
            sa.UniqueConstraint("stripe_event_id", name=f"uq_{table}_stripe_event_id"),
            sa.Index(f"ix_{table}_status", "status"),
        )

    id: Mapped[int] = mapped_column(primary_key=True)
    stripe_event_id: Mapped[str] = mapped_column(_string(255))
    type: Mapped[str] = mapped_column(_string(255))
    stripe_account_id: Mapped[str | None] = mapped_column(_string(255))
    livemode: Mapped[bool] = mapped_column(default=False)
    #: ``processed``, ``ignored`` or ``failed``.
    status: Mapped[str] = mapped_column(_string(16))
    error: Mapped[str | None] = mapped_column(_TEXT)
    #: The raw JSON body as Stripe signed it, so a failed event can be replayed.
    payload: Mapped[str | None] = mapped_column(_TEXT)
    received_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))

    def __repr__(self) -> str:
        return f"<WebhookEvent {self.stripe_event_id} {self.type} {self.status}>"


class InstallStateMixin:
    """An OAuth ``state`` handed out by the install view, until it is used or expires.
    Table ``partnerstack_install_state``.

    The browser's session holds the state too, but a client-side session cookie can
    be replayed; deleting this row when the callback uses the state is what makes it
    single-use. Only a SHA-256 digest of the state is stored.
    """

    if TYPE_CHECKING:  # what declarative gives each model class
        __table__: ClassVar[sa.Table]

    @declared_attr.directive
    def __tablename__(cls) -> str:
        return "partnerstack_install_state"

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        table = cls.__tablename__
        return (
            sa.UniqueConstraint("state_hash", name=f"uq_{table}_state_hash"),
            sa.Index(f"ix_{table}_expires_at", "expires_at"),
        )

    id: Mapped[int] = mapped_column(primary_key=True)
    state_hash: Mapped[str] = mapped_column(_string(64))
    livemode: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))

    def __repr__(self) -> str:
        return f"<InstallState expires={self.expires_at}>"


class RefundMixin:
    """One Stripe refund, as its events tell it. Table ``partnerstack_refund``.

    Keyed by the refund id, so a refund seen through ``refund.*``, ``charge.refund.updated``
    and a charge's own ``refunds`` list counts once. ``payment_key`` is the transaction's
    ``key`` it lowers (the charge, or in invoice mode the charge's invoice). Its status
    only moves forward (:data:`REFUND_RANKS`), so a late ``pending`` never undoes a failure.
    """

    if TYPE_CHECKING:  # what declarative gives each model class
        __table__: ClassVar[sa.Table]

    @declared_attr.directive
    def __tablename__(cls) -> str:
        return "partnerstack_refund"

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        table = cls.__tablename__
        return (
            sa.UniqueConstraint("account_scope", "refund_id", name=f"uq_{table}_refund_id"),
            sa.Index(f"ix_{table}_payment_key", "payment_key", "account_scope"),
        )

    id: Mapped[int] = mapped_column(primary_key=True)
    refund_id: Mapped[str] = mapped_column(_string(255))
    payment_key: Mapped[str] = mapped_column(_string(255))
    account_scope: Mapped[str] = mapped_column(_string(255), default="")
    amount: Mapped[int] = mapped_column(sa.BigInteger)
    #: ``pending``, ``requires_action``, ``succeeded``, ``failed`` or ``canceled``.
    status: Mapped[str] = mapped_column(_string(32))
    status_rank: Mapped[int] = mapped_column(sa.SmallInteger)
    #: When it had failed or been canceled: the ``created`` of the earliest event showing
    #: it so (Unix seconds). A charge object taken after that already leaves it out.
    undone_at: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    def __repr__(self) -> str:
        return f"<Refund {self.refund_id} {self.amount} {self.status}>"


class CommissionMixin:
    """What a partner earns on one payment, kept right as the payment changes.
    Table ``partnerstack_commission``.

    One row per transaction (unique ``transaction_id``). ``amount`` is what the payment
    earns now (0 once it is reversed); ``paid_amount`` is what payouts have paid on it so
    far. A payout pays ``amount - paid_amount`` and sets ``paid_amount`` to ``amount``, so
    a change after a payout (a refund lowers or reverses it, a failed refund restores it)
    is the difference the partner's next payout carries: a clawback when negative.

    Subclasses whose transaction or customer model has another class or table name set
    ``transaction_model``/``transaction_table`` and ``customer_table``.
    """

    if TYPE_CHECKING:  # what declarative gives each model class
        __table__: ClassVar[sa.Table]

        def __init__(self, **kwargs: Any) -> None: ...

    transaction_model: ClassVar[str] = "PartnerStackTransaction"
    transaction_table: ClassVar[str] = "partnerstack_transaction"
    customer_table: ClassVar[str] = "partnerstack_customer"

    @declared_attr.directive
    def __tablename__(cls) -> str:
        return "partnerstack_commission"

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        table = cls.__tablename__
        return (
            sa.UniqueConstraint("transaction_id", name=f"uq_{table}_transaction_id"),
            sa.Index(f"ix_{table}_partner_status", "partner_key", "status"),
            sa.Index(f"ix_{table}_customer_id", "customer_id"),
            sa.CheckConstraint("amount >= 0", name=f"ck_{table}_amount"),
            sa.CheckConstraint("paid_amount >= 0", name=f"ck_{table}_paid_amount"),
        )

    id: Mapped[int] = mapped_column(primary_key=True)

    @declared_attr
    def transaction_id(cls) -> Mapped[int]:
        return mapped_column(sa.ForeignKey(f"{cls.transaction_table}.id", ondelete="CASCADE"))

    @declared_attr
    def transaction(cls) -> Mapped[Any]:
        return relationship(cls.transaction_model)

    @declared_attr
    def customer_id(cls) -> Mapped[int | None]:
        return mapped_column(sa.ForeignKey(f"{cls.customer_table}.id", ondelete="SET NULL"))

    partner_key: Mapped[str] = mapped_column(_string(500))
    product_key: Mapped[str | None] = mapped_column(_string(500))
    #: What the payment earns now, minor units; 0 once reversed. Never negative.
    amount: Mapped[int] = mapped_column(sa.BigInteger)
    currency: Mapped[str] = mapped_column(_string(3))
    #: What payouts have paid on it so far (minor units).
    paid_amount: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    #: ``pending``, ``approved``, ``paid`` or ``reversed`` (see :data:`COMMISSION_STATUSES`).
    status: Mapped[str] = mapped_column(_string(16))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    approved_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    paid_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    reversed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    #: The payout that last paid it (or its clawback).
    payout_id: Mapped[str | None] = mapped_column(_string(64))

    @property
    def due(self) -> int:
        """What the next payout owes on it (negative: a clawback); 0 while pending."""
        if self.approved_at is None and not self.paid_amount:
            return 0
        return self.amount - (self.paid_amount or 0)

    def __repr__(self) -> str:
        return f"<Commission {self.partner_key!r} {self.amount} {self.currency} {self.status}>"


class PayoutMixin:
    """One line of a payout: what one partner is paid in one currency.
    Table ``partnerstack_payout``.

    ``amount`` nets approved commissions and clawbacks, so it may be negative (the
    partner owes it back; carry it into the next payout yourself or collect it).
    """

    if TYPE_CHECKING:  # what declarative gives each model class
        __table__: ClassVar[sa.Table]

        def __init__(self, **kwargs: Any) -> None: ...

    @declared_attr.directive
    def __tablename__(cls) -> str:
        return "partnerstack_payout"

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        table = cls.__tablename__
        return (
            sa.UniqueConstraint("payout_id", "partner_key", "currency", name=f"uq_{table}_line"),
            sa.Index(f"ix_{table}_partner_key", "partner_key"),
        )

    id: Mapped[int] = mapped_column(primary_key=True)
    payout_id: Mapped[str] = mapped_column(_string(64))
    partner_key: Mapped[str] = mapped_column(_string(500))
    currency: Mapped[str] = mapped_column(_string(3))
    amount: Mapped[int] = mapped_column(sa.BigInteger)
    #: How many commissions the line pays (or claws back).
    commissions: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)

    def __repr__(self) -> str:
        return f"<Payout {self.payout_id} {self.partner_key!r} {self.amount} {self.currency}>"


#: ``Commission.status`` values.
PENDING, APPROVED, PAID, REVERSED = "pending", "approved", "paid", "reversed"
COMMISSION_STATUSES = (PENDING, APPROVED, PAID, REVERSED)


class SignalDeliveryMixin:
    """One data signal to deliver, written in the transaction of the change it speaks of.
    Table ``partnerstack_signal_delivery`` (the outbox of durable signals).

    ``arguments`` is the signal's keyword arguments as JSON: a model instance is kept
    as its model's name in :class:`Models` and its primary key, and read again from the
    database when the delivery is sent; the event as its stored id when it was stored.
    """

    if TYPE_CHECKING:  # what declarative gives each model class
        __table__: ClassVar[sa.Table]

    @declared_attr.directive
    def __tablename__(cls) -> str:
        return "partnerstack_signal_delivery"

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        table = cls.__tablename__
        return (sa.Index(f"ix_{table}_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    #: The blinker signal's name (``customer-created``, ...).
    signal: Mapped[str] = mapped_column(_string(64))
    arguments: Mapped[str] = mapped_column(_TEXT)
    #: ``pending``, ``delivered`` or ``dead``.
    status: Mapped[str] = mapped_column(_string(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(_TEXT)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))

    def __repr__(self) -> str:
        return f"<SignalDelivery {self.id} {self.signal} {self.status}>"


#: How far along a refund status is; a status never goes back to a lower rank. A refund
#: can fail after it succeeded (Stripe sends ``refund.failed`` then), never the reverse.
REFUND_RANKS = {"pending": 1, "requires_action": 1, "succeeded": 2, "failed": 3, "canceled": 3}
#: Refund statuses that give the money back to the payment.
REFUND_UNDONE = ("failed", "canceled")


class Models(NamedTuple):
    """The model classes the extension works with.

    Models added after the first four are keyword fields with a default: a host's
    ``Models(Customer, Transaction, StripeAccount, WebhookEvent)`` gets the default
    class for each of them, built on its ``db`` (see :func:`complete_models`).
    """

    Customer: type[CustomerMixin]
    Transaction: type[TransactionMixin]
    StripeAccount: type[StripeAccountMixin]
    WebhookEvent: type[WebhookEventMixin]
    # None only until complete_models fills in the default class: every Models the
    # extension works with has all of them.
    InstallState: type[InstallStateMixin] = None  # type: ignore[assignment]
    Refund: type[RefundMixin] = None  # type: ignore[assignment]
    Commission: type[CommissionMixin] = None  # type: ignore[assignment]
    Payout: type[PayoutMixin] = None  # type: ignore[assignment]
    SignalDelivery: type[SignalDeliveryMixin] = None  # type: ignore[assignment]


#: The mixin each default model is built from, by its field in :class:`Models`.
MIXINS: dict[str, type] = {
    "Customer": CustomerMixin,
    "Transaction": TransactionMixin,
    "StripeAccount": StripeAccountMixin,
    "WebhookEvent": WebhookEventMixin,
    "InstallState": InstallStateMixin,
    "Refund": RefundMixin,
    "Commission": CommissionMixin,
    "Payout": PayoutMixin,
    "SignalDelivery": SignalDeliveryMixin,
}

# One set of default models per ``SQLAlchemy`` object: declaring a table twice on
# the same metadata is an error, and several extension objects may share one ``db``.
_default_classes: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def default_model(db: Any, name: str, related: dict[str, str] | None = None) -> Any:
    """The default model ``name`` (a field of :class:`Models`) on ``db.Model``, built once.

    Its class is ``PartnerStack<name>``: ``TransactionMixin.customer_model`` names
    ``PartnerStackCustomer``. ``related`` sets the class attributes that name the
    models it refers to (``CommissionMixin.transaction_model``, say) when the host's
    own classes replace the default ones.
    """
    classes = _default_classes.setdefault(db, {})
    if name not in classes:
        classes[name] = types.new_class(
            f"PartnerStack{name}",
            (MIXINS[name], db.Model),
            exec_body=lambda namespace: namespace.update(__module__=__name__, **(related or {})),
        )
    return classes[name]


def _related(name: str, models: Models) -> dict[str, str] | None:
    """What a later default model must know of the host's own classes it refers to."""
    if name != "Commission":
        return None
    return {
        "transaction_model": models.Transaction.__name__,
        "transaction_table": models.Transaction.__tablename__,
        "customer_table": models.Customer.__tablename__,
    }


def default_models(db: Any) -> Models:
    """The default models declared on ``db.Model`` (built once per ``db``)."""
    return Models(**{name: default_model(db, name) for name in Models._fields})


def complete_models(models: Models, db: Any) -> Models:
    """``models`` with the default class, on ``db``, for each later model the host left out."""
    missing = {
        name: default_model(db, name, _related(name, models))
        for name in Models._fields
        if getattr(models, name) is None
    }
    return models._replace(**missing) if missing else models  # the same object when complete
