"""The ``PartnerStackStripe`` extension object and its per-app state."""

from __future__ import annotations

import secrets
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from flask import Flask, Response, current_app, has_request_context, request

from . import accounts, commissions, payouts, signals
from .config import DEFAULTS, PREFIX, Settings, url_path
from .database import SUPPORTED, SUPPORTED_BACKENDS
from .models import Models, complete_models, default_models
from .notify import send_notifications
from .publisher import Publisher
from .receiver import Handlers, HostHandler, Receiver
from .redaction import parameters_hidden
from .referral import referred_partner_key, remember_referral
from .rules import BUILTIN_HANDLERS, CLAIM_LOCKS, LOOKUPS
from .signup import record_signup, signup_details, signup_party
from .transactions import UnitOfWork
from .values import (
    ID_LENGTH,
    METADATA_LENGTH,
    STRIPE_ID,
    argument,
    currency_code,
    mode_argument,
    utc_datetime,
)

if TYPE_CHECKING:
    from .tasks import Tasks

EXTENSION_KEY = "partnerstack_stripe"

F = TypeVar("F", bound=HostHandler)
InstallGuard = Callable[[str, "str | None"], bool]
G = TypeVar("G", bound=InstallGuard)


@dataclass
class State:
    """Everything the extension keeps for one app, in ``app.extensions["partnerstack_stripe"]``."""

    extension: PartnerStackStripe
    settings: Settings
    db: Any
    models: Models
    receiver: Receiver
    #: ``with unit_of_work(session):`` one writing transaction (transactions.UnitOfWork).
    unit_of_work: UnitOfWork
    #: ``celery`` processing: publishes the webhook's stored events off the request's path.
    publisher: Publisher


class PartnerStackStripe:
    """Track Stripe payments for a partner program in a Flask app.

    ``PartnerStackStripe(app, db=db)`` or, with an app factory,
    ``partnerstack = PartnerStackStripe(db=db)`` then ``partnerstack.init_app(app)``.
    ``db`` may be left out when the app already has Flask-SQLAlchemy set up.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        db: Any = None,
        models: Models | Mapping[str, Any] | None = None,
        url_prefix: str | None = None,
        register_blueprint: bool = True,
    ) -> None:
        self._db = db
        self._models = _as_models(models) if models is not None else None
        if self._models is None and db is not None:
            self._models = default_models(db)
        elif self._models is not None and db is not None:
            self._models = complete_models(self._models, db)
        self._url_prefix = url_prefix
        self._register_blueprint = register_blueprint
        self._handlers: dict[str, list[HostHandler]] = {}
        self._install_guard: InstallGuard | None = None
        #: The apps set up so far (a task without an app context pushes the only one).
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        self._tasks: Tasks | None = None
        if app is not None:
            self.init_app(app)

    @property
    def models(self) -> Models:
        """The model classes ``Customer``, ``Transaction``, ``StripeAccount``, ``WebhookEvent``."""
        if self._models is None:
            raise RuntimeError(
                "The models are built on the app's Flask-SQLAlchemy db: pass db= to "
                "PartnerStackStripe(...) or call init_app(app) first."
            )
        return self._models

    def init_app(
        self,
        app: Flask,
        *,
        db: Any = None,
        models: Models | Mapping[str, Any] | None = None,
        url_prefix: str | None = None,
        register_blueprint: bool | None = None,
    ) -> None:
        """Set the extension up on ``app``: read its config, build models, mount the blueprint."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "PartnerStackStripe is already set up on this app. Each app calls "
                "init_app (or PartnerStackStripe(app)) once; to change its options, "
                "create the app again."
            )
        # The arguments first: a wrong one leaves the app as it was, to be set up again.
        prefix = url_prefix if url_prefix is not None else self._url_prefix
        prefix = None if prefix is None else url_path("url_prefix", prefix)
        register = (
            register_blueprint if register_blueprint is not None else self._register_blueprint
        )
        if not isinstance(register, bool):
            raise ValueError(f"register_blueprint must be True or False, got {register!r}")
        # DURABLE_SIGNALS defaults to whether PROCESSING is "celery": set before the
        # plain defaults, so the app's config shows the value in force.
        processing = app.config.get(PREFIX + "PROCESSING", DEFAULTS["PROCESSING"])
        app.config.setdefault(PREFIX + "DURABLE_SIGNALS", processing == "celery")
        for name, default in DEFAULTS.items():
            app.config.setdefault(PREFIX + name, default)
        settings = Settings.from_config(app.config)
        _refuse_unsupported_database(app)
        db = self._bind_db(app, db)
        if models is not None:
            self._models = _as_models(models)
        elif self._models is None:
            self._models = default_models(db)
        self._models = complete_models(self._models, db)

        unit_of_work = UnitOfWork(settings.sqlite_busy_timeout)
        # The receiver reads the extension's own handler mapping, so handlers
        # registered after init_app still count.
        handlers = Handlers(
            builtin=BUILTIN_HANDLERS, host=self._handlers, lookups=LOOKUPS, claim_locks=CLAIM_LOCKS
        )
        receiver = Receiver(self._models, settings, unit_of_work, handlers, send_notifications)
        # Per app, and its thread starts only when a webhook first queues an event (in
        # celery mode), in the process that serves it: after a server's fork.
        publisher = Publisher(self._enqueue_many)
        receiver.enqueue = publisher.submit
        self._apps.add(app)
        app.extensions[EXTENSION_KEY] = State(
            self, settings, db, self._models, receiver, unit_of_work, publisher
        )

        if register:
            from .views import create_blueprint

            blueprint = create_blueprint(app)
            app.register_blueprint(
                blueprint, url_prefix=settings.url_prefix if prefix is None else prefix
            )

        from .cli import partnerstack_cli
        from .redaction import redact_stripe_logs

        # On the app, not the blueprint: a host that mounts the blueprint itself, or
        # not at all, keeps its referrals.
        app.after_request(_remember_referral)
        app.cli.add_command(partnerstack_cli)
        redact_stripe_logs()

    def handler(self, event_type: str) -> Callable[[F], F]:
        """Register ``fn(event)`` to run for ``event_type`` inside the event's transaction.

        An exception in it rolls the whole event back: it is stored as failed, the
        webhook answers 500, and Stripe's redelivery applies it again.
        """

        if not (isinstance(event_type, str) and event_type and event_type == event_type.strip()):
            raise ValueError(f"event_type must be a Stripe event type, got {event_type!r}")

        def register(fn: F) -> F:
            if not callable(fn):
                raise ValueError(f"handler({event_type!r}) decorates a function, got {fn!r}")
            self._handlers.setdefault(event_type, []).append(fn)
            return fn

        return register

    def install_guard(self, guard: G) -> G:
        """Register ``guard(action, stripe_account_id) -> bool``: who may connect accounts.

        ``action`` is ``"install"`` or ``"uninstall"`` (with the account for uninstall).
        Without a guard, install and uninstall answer 403.
        """
        if not callable(guard):
            raise ValueError(f"install_guard takes a function, got {guard!r}")
        self._install_guard = guard
        return guard

    def create_endpoint(
        self,
        stripe_account_id: str,
        signing_secret: str | None,
        *,
        livemode: bool = False,
    ) -> Any:
        """Create (or replace) the manual webhook endpoint of a connected account.

        Its URL is ``url_for("partnerstack_stripe.endpoint_webhook", endpoint_id=...)``;
        events posted there are verified with ``signing_secret`` only and belong to
        the account. The secret may be set later (Stripe shows it once the endpoint
        exists) with :meth:`set_endpoint_secret`; until then its events are refused.
        """
        if not (
            isinstance(stripe_account_id, str)
            and stripe_account_id.startswith("acct_")
            and len(stripe_account_id) > len("acct_")
            and STRIPE_ID.fullmatch(stripe_account_id)
        ):
            raise ValueError("stripe_account_id must be a Stripe account id (acct_...).")
        if not isinstance(livemode, bool):
            raise ValueError("livemode must be True or False.")
        return self._write_endpoint(
            stripe_account_id, livemode, secrets.token_hex(20), signing_secret, reactivate=True
        )

    def set_endpoint_secret(self, endpoint_id: str, signing_secret: str) -> Any:
        """Set the signing secret Stripe gave for the endpoint ``endpoint_id``."""
        argument("endpoint_id", endpoint_id, ID_LENGTH, optional=False)
        if argument("signing_secret", signing_secret, ID_LENGTH) is None:
            raise ValueError("signing_secret must be the endpoint's signing secret (whsec_...).")
        state = get_state()
        account = accounts.find_endpoint(state.db.session(), state.models, endpoint_id)
        if account is None:
            raise LookupError(f"No webhook endpoint {endpoint_id!r}.")
        return self._write_endpoint(
            account.stripe_account_id,
            account.livemode,
            endpoint_id,
            signing_secret,
            reactivate=False,
        )

    def _write_endpoint(
        self,
        stripe_account_id: str,
        livemode: bool,
        endpoint_id: str,
        signing_secret: str | None,
        *,
        reactivate: bool,
    ) -> Any:
        signing_secret = argument("signing_secret", signing_secret, ID_LENGTH)
        if signing_secret is not None and not (
            signing_secret.startswith("whsec_") and len(signing_secret) > len("whsec_")
        ):
            raise ValueError("signing_secret must be a webhook signing secret (whsec_...).")
        state = get_state()
        session = state.db.session()
        with parameters_hidden(), state.unit_of_work(session):
            account = accounts.set_endpoint(
                session,
                state.models,
                stripe_account_id,
                livemode,
                endpoint_id,
                signing_secret,
                reactivate=reactivate,
            )
        return account

    def create_customer(
        self,
        customer_key: str,
        email: str | None,
        *,
        partner_key: str | None = None,
        name: str | None = None,
        stripe_account_id: str | None = None,
        livemode: bool | None = None,
    ) -> Any:
        """Record a customer at signup and attribute it to a partner (server-side tracking).

        The partner comes from ``partner_key``, or else from the referral cookie set
        when the visitor arrived with ``?ps_partner_key=``. A customer that exists
        already is filled in, never re-attributed. Commits, then sends
        ``customer_created`` (or ``customer_updated``); returns the customer. Called
        from a host handler, it is part of the event's transaction instead: it commits
        (or rolls back) with the event, and its signal is sent after that commit.

        Every argument is checked before anything is written: a wrong type, a control
        character, a blank key or a value longer than its column (500 characters for
        keys and names, 320 for the email) raises :class:`ValueError` naming it.
        """
        state = get_state()
        party = signup_party(
            customer_key,
            email,
            stripe_account_id=stripe_account_id,
            livemode=state.settings.livemode if livemode is None else livemode,
        )
        partner_key, name = signup_details(partner_key, name)
        if partner_key is None and has_request_context():
            partner_key = referred_partner_key(request)
        session = state.db.session()
        joining = state.unit_of_work.is_open(session)
        with state.unit_of_work(session):
            customer, notifications = record_signup(
                session,
                state.models,
                party,
                partner_key=partner_key,
                name=name,
                match_email=state.settings.match_email,
                rewards=state.settings.rewards,
            )
            if not joining:  # joining an event's transaction, the event's outbox has them
                notifications = state.receiver.record(session, notifications)
        # Called from a host handler, this joined the event's transaction: its signals
        # go out with the event's, after that commit.
        if not state.unit_of_work.defer(session, notifications):
            state.receiver.deliver(session, notifications)
        return customer

    def init_celery(
        self,
        celery_app: Any,
        *,
        retry_backoff: int = 5,
        max_retries: int = 8,
        beat: bool = False,
    ) -> Tasks:
        """Register ``partnerstack.apply_event``, ``.deliver_signals`` and ``.sweep`` on
        the host's Celery app, and enqueue webhook events on it (``PROCESSING = "celery"``).

        Create ``celery_app`` as Flask's documentation does, with a task class that
        pushes the app context; without one, each task pushes the context of the one
        app this extension was set up on. A failed event is retried after
        ``retry_backoff`` seconds, doubled each time, ``max_retries`` times (it stays
        stored as ``failed`` meanwhile). ``beat=True`` adds the sweep (every minute) and
        the signal retries (every 30 seconds) to ``celery_app.conf.beat_schedule``.
        """
        from .tasks import register

        self._tasks = register(
            celery_app, self, retry_backoff=retry_backoff, max_retries=max_retries, beat=beat
        )
        return self._tasks

    @property
    def can_enqueue(self) -> bool:
        """Whether :meth:`init_celery` was called, so events can be handed to Celery."""
        return self._tasks is not None

    def enqueue(self, event_id: str) -> None:
        """Hand a stored event to the Celery app given to :meth:`init_celery`, now.

        The webhook does not call this in the request: its app's publisher does, from a
        background thread, once the event is committed (``State.publisher``).
        """
        if self._tasks is None:
            raise RuntimeError(
                "PARTNERSTACK_STRIPE_PROCESSING is 'celery' but partnerstack.init_celery("
                "celery_app) was not called."
            )
        self._tasks.enqueue(event_id)

    def _enqueue_many(self, event_ids: Sequence[str]) -> None:
        """:meth:`enqueue` for several events at once (one message): the publisher's."""
        if self._tasks is None:
            self.enqueue(event_ids[0])  # raises what enqueue says
        else:
            self._tasks.enqueue_many(event_ids)

    def only_app(self) -> Flask:
        """The one app this extension is set up on (for a task run without an app context)."""
        apps = list(self._apps)
        if len(apps) != 1:
            raise RuntimeError(
                "A partnerstack task ran without a Flask app context, and this extension "
                f"is set up on {len(apps)} apps: create the Celery app with a task "
                "class that pushes the app context (Flask's Celery pattern)."
            )
        return apps[0]

    def partner_summary(
        self, partner_key: str, *, since: datetime | None = None, livemode: bool | None = None
    ) -> dict[str, Any]:
        """A partner's customers, standing payments and commissions (by status and
        currency), and what its next payout would pay (``due``), for a partner page.

        ``{"partner_key", "customers": n, "payments": {currency: {"count", "amount"}},
        "commissions": {status: {currency: amount}}, "due": {currency: amount}}``;
        amounts in minor units. ``since`` counts only what was created from then on.
        Only one mode's data (``livemode``; None: the app's, see ``commissions.counted_mode``).
        """
        partner = argument("partner_key", partner_key, METADATA_LENGTH, optional=False)
        assert partner is not None  # not optional
        start = utc_datetime("since", since)
        chosen = None if livemode is None else mode_argument("livemode", livemode)
        state = get_state()
        session = state.db.session()
        mode = commissions.counted_mode(session, state.models, state.settings, chosen)
        return commissions.partner_summary(
            session, state.models, partner, since=start, livemode=mode
        )

    def approve_commissions(self, *, now: datetime | None = None) -> list[Any]:
        """Approve the pending commissions older than ``PARTNERSTACK_STRIPE_COMMISSION_HOLD_DAYS``;
        commits, sends ``commission_updated`` for each, returns them."""
        moment = utc_datetime("now", now)
        state = get_state()
        hold = timedelta(days=state.settings.commission_hold_days)
        if moment is not None and moment - datetime.min.replace(tzinfo=timezone.utc) < hold:
            raise ValueError(f"now must be at least the hold ({hold.days} days) after year 1.")
        session = state.db.session()
        with state.unit_of_work(session):
            approved = commissions.approve(
                session, state.models, hold_days=state.settings.commission_hold_days, now=moment
            )
            notifications = state.receiver.record(
                session,
                [
                    (
                        signals.commission_updated,
                        {"commission": c, "transaction": None, "event": None},
                    )
                    for c in approved
                ],
            )
        state.receiver.deliver(session, notifications)
        return approved

    def export_payouts(
        self, *, currency: str | None = None, livemode: bool | None = None
    ) -> list[payouts.PayoutLine]:
        """Pay what is due, one line per partner and currency (clawbacks netted), under
        a new payout id; commits. Running it again pays nothing twice. Only commissions
        on payments of one mode (``livemode``; None: the app's, see
        ``commissions.counted_mode``): test-mode payments are never paid with live ones."""
        code = None if currency is None else currency_code("currency", currency)
        chosen = None if livemode is None else mode_argument("livemode", livemode)
        state = get_state()
        session = state.db.session()
        with state.unit_of_work(session):
            mode = commissions.counted_mode(session, state.models, state.settings, chosen)
            lines = payouts.export_payouts(session, state.models, livemode=mode, currency=code)
        return lines

    def _bind_db(self, app: Flask, db: Any) -> Any:
        db = db if db is not None else self._db
        if db is None:
            db = app.extensions.get("sqlalchemy")
            if db is None:
                raise RuntimeError(
                    "PartnerStackStripe needs Flask-SQLAlchemy: call db.init_app(app) "
                    "before PartnerStackStripe(app), or pass db= explicitly."
                )
        if app.extensions.get("sqlalchemy") is not db:
            raise RuntimeError(
                "The db given to PartnerStackStripe is not set up on this app: call "
                "db.init_app(app) before partnerstack.init_app(app)."
            )
        if self._db is None:
            self._db = db
        elif self._db is not db:
            raise RuntimeError(
                "This PartnerStackStripe object already has its models on another db; "
                "create one PartnerStackStripe object per SQLAlchemy db."
            )
        return db


def _remember_referral(response: Response) -> Response:
    """``after_request``: set the referral cookie when a visitor came through a partner link."""
    if not request.query_string:  # most requests (a webhook's, say): nothing to parse
        return response
    return remember_referral(response, request, get_state().settings.referral_cookie_days)


def get_state(app: Flask | None = None) -> State:
    """The extension's state for ``app`` (default: the current app)."""
    app = app if app is not None else current_app
    try:
        return app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]
    except KeyError:
        raise RuntimeError(
            "PartnerStackStripe is not set up on this app: did you forget "
            "partnerstack.init_app(app)?"
        ) from None


def _as_models(models: Models | Mapping[str, Any]) -> Models:
    if isinstance(models, Models):
        return models
    if isinstance(models, Mapping):
        return Models(**models)
    # An object with the models as attributes (a module, say): the first four are
    # required, later ones fall back to their default class.
    first, later = Models._fields[:4], Models._fields[4:]
    return Models(
        *(getattr(models, name) for name in first),
        **{name: getattr(models, name, None) for name in later},
    )


def _refuse_unsupported_database(app: Flask) -> None:
    """A clear error at init_app for a database whose statements we do not write."""
    uri = app.config.get("SQLALCHEMY_DATABASE_URI")
    if not isinstance(uri, str):
        return  # an engine URL object, or no URI yet: checked when a statement is built
    try:
        backend = sa.make_url(uri).get_backend_name()
    except sa.exc.ArgumentError:
        return  # Flask-SQLAlchemy reports a malformed URI itself
    if backend not in SUPPORTED_BACKENDS:
        raise RuntimeError(
            f"flask-partnerstack-stripe supports {SUPPORTED}, not {backend!r} "
            f"(SQLALCHEMY_DATABASE_URI). MySQL and MariaDB: mysql+pymysql://user:pw@host/db"
            "?charset=utf8mb4."
        )
