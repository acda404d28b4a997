"""Configuration keys, their defaults, and the checks run once at ``init_app``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PREFIX = "PARTNERSTACK_STRIPE_"

#: Every configuration key the extension reads, without its prefix, and its default.
DEFAULTS: dict[str, Any] = {
    "WEBHOOK_SECRETS": [],
    "SIGNATURE_TOLERANCE": 300,
    "MAX_BODY": 1024 * 1024,
    "TRANSACTION_SOURCE": "charge",
    "REFUND_POLICY": "delete",
    "INVOICE_AMOUNT": "subtotal",
    "MATCH_EMAIL": True,
    "API_KEY": None,
    "CLIENT_ID": None,
    "URL_PREFIX": "/partnerstack",
    "REFERRAL_COOKIE_DAYS": 90,
    "STORE_IGNORED_EVENTS": True,
    "SQLITE_BUSY_TIMEOUT": 30,
    "LIVEMODE": None,
    "TEST_API_KEY": None,
    "INSTALL_METHOD": "connect",
    "INSTALL_SCOPE": "read_write",
    "INSTALL_REDIRECT": None,
    "EVENT_RETENTION_DAYS": 90,
    "PROCESSING": "inline",
    #: None: False inline, True with Celery.
    "DURABLE_SIGNALS": None,
    "SIGNAL_MAX_ATTEMPTS": 10,
    #: Seconds before a durable signal's first retry (doubled each time, up to an hour);
    #: a delivery its sender has not settled by then is due for the retry task too.
    "SIGNAL_RETRY_DELAY": 30,
    #: Seconds an event may stay received before ``sweep`` enqueues it again.
    "SWEEP_AFTER": 60,
    "REWARDS": [],
    "COMMISSION_HOLD_DAYS": 30,
}

TRANSACTION_SOURCES = ("charge", "invoice")
REFUND_POLICIES = ("delete", "prorate")
#: The invoice field a transaction's amount comes from in invoice mode.
INVOICE_AMOUNTS = ("subtotal", "total_excluding_tax", "amount_paid")
INSTALL_METHODS = ("connect", "stripe_app")
PROCESSINGS = ("inline", "celery")


class ConfigurationError(ValueError):
    """A ``PARTNERSTACK_STRIPE_*`` key has a value the extension cannot work with."""


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one app, read once at ``init_app``.

    Its repr leaves out the webhook secrets and the API keys: it reaches debugger pages,
    error trackers and test reports (``check`` shows them masked).
    """

    webhook_secrets: tuple[str, ...] = field(repr=False)
    signature_tolerance: int
    max_body: int
    transaction_source: str
    refund_policy: str
    invoice_amount: str
    match_email: bool
    api_key: str | None = field(repr=False)
    client_id: str | None
    url_prefix: str
    referral_cookie_days: int
    store_ignored_events: bool
    sqlite_busy_timeout: float
    livemode: bool
    test_api_key: str | None = field(repr=False)
    install_method: str
    install_scope: str
    install_redirect: str | None
    event_retention_days: int
    processing: str = "inline"
    durable_signals: bool = False
    signal_max_attempts: int = 10
    signal_retry_delay: float = 30
    sweep_after: float = 60
    #: ``rewards.Rule`` objects from ``PARTNERSTACK_STRIPE_REWARDS``.
    rewards: tuple[Any, ...] = ()
    commission_hold_days: int = 30
    #: Whether LIVEMODE or API_KEY says the app's mode (else ``livemode`` is a default).
    mode_known: bool = False

    def api_key_for(self, livemode: bool) -> str | None:
        """The platform's secret key for the mode, if one is configured."""
        for key in (self.api_key, self.test_api_key):
            if key is not None and is_live_key(key) == livemode:
                return key
        return None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        def get(name: str) -> Any:
            return config.get(PREFIX + name, DEFAULTS[name])

        processing = _choice("PROCESSING", get("PROCESSING"), PROCESSINGS)
        from .rewards import parse_rules  # rewards imports this module

        return cls(
            webhook_secrets=_secrets(get("WEBHOOK_SECRETS")),
            signature_tolerance=_positive_int("SIGNATURE_TOLERANCE", get("SIGNATURE_TOLERANCE")),
            max_body=_positive_int("MAX_BODY", get("MAX_BODY")),
            transaction_source=_choice(
                "TRANSACTION_SOURCE", get("TRANSACTION_SOURCE"), TRANSACTION_SOURCES
            ),
            refund_policy=_choice("REFUND_POLICY", get("REFUND_POLICY"), REFUND_POLICIES),
            invoice_amount=_choice("INVOICE_AMOUNT", get("INVOICE_AMOUNT"), INVOICE_AMOUNTS),
            match_email=_bool("MATCH_EMAIL", get("MATCH_EMAIL")),
            api_key=_optional_str("API_KEY", get("API_KEY")),
            client_id=_optional_str("CLIENT_ID", get("CLIENT_ID")),
            url_prefix=_url_prefix(get("URL_PREFIX")),
            referral_cookie_days=_days("REFERRAL_COOKIE_DAYS", get("REFERRAL_COOKIE_DAYS"), 1),
            store_ignored_events=_bool("STORE_IGNORED_EVENTS", get("STORE_IGNORED_EVENTS")),
            sqlite_busy_timeout=_positive_number(
                "SQLITE_BUSY_TIMEOUT", get("SQLITE_BUSY_TIMEOUT"), at_most=MAX_BUSY_TIMEOUT
            ),
            livemode=_livemode(get("LIVEMODE"), get("API_KEY")),
            mode_known=(
                get("LIVEMODE") is not None or _optional_str("API_KEY", get("API_KEY")) is not None
            ),
            test_api_key=_optional_str("TEST_API_KEY", get("TEST_API_KEY")),
            install_method=_choice("INSTALL_METHOD", get("INSTALL_METHOD"), INSTALL_METHODS),
            install_scope=_choice(
                "INSTALL_SCOPE", get("INSTALL_SCOPE"), ("read_write", "read_only")
            ),
            install_redirect=_redirect(get("INSTALL_REDIRECT")),
            event_retention_days=_days("EVENT_RETENTION_DAYS", get("EVENT_RETENTION_DAYS"), 1),
            processing=processing,
            durable_signals=(
                processing == "celery"
                if get("DURABLE_SIGNALS") is None
                else _bool("DURABLE_SIGNALS", get("DURABLE_SIGNALS"))
            ),
            signal_max_attempts=_positive_int("SIGNAL_MAX_ATTEMPTS", get("SIGNAL_MAX_ATTEMPTS")),
            signal_retry_delay=_positive_number(
                "SIGNAL_RETRY_DELAY", get("SIGNAL_RETRY_DELAY"), at_most=MAX_RETRY_DELAY
            ),
            sweep_after=_positive_number("SWEEP_AFTER", get("SWEEP_AFTER"), at_most=MAX_SECONDS),
            rewards=parse_rules(get("REWARDS")),
            commission_hold_days=_days("COMMISSION_HOLD_DAYS", get("COMMISSION_HOLD_DAYS"), 0),
        )


def _fail(name: str, expected: str, value: Any) -> ConfigurationError:
    # Secrets and keys never appear in the message: only their type.
    return ConfigurationError(f"{PREFIX}{name} must be {expected}, got {type(value).__name__}")


def _secrets(value: Any) -> tuple[str, ...]:
    expected = "a list of non-empty signing secrets (whsec_...)"
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise _fail("WEBHOOK_SECRETS", expected, value)
    for index, secret in enumerate(value):
        if not (isinstance(secret, str) and secret.strip()):
            # Most often a secret read from an environment variable that is not set:
            # say which item and what it is, never its value.
            unset = secret is None or isinstance(secret, str)
            hint = " (is the environment variable it is read from set?)" if unset else ""
            raise ConfigurationError(
                f"{PREFIX}WEBHOOK_SECRETS must be {expected}, but item {index} is"
                f" {_what(secret)}{hint}"
            )
    # Stripe's secrets hold no whitespace: around one, it came with the file or the
    # variable it was read from (a final newline), and no signature would ever match.
    return tuple(secret.strip() for secret in value)


def _what(value: Any) -> str:
    """What a bad secret is, without showing it: None, empty, or its type."""
    if value is None:
        return "None"
    if isinstance(value, str):
        return "empty"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"{PREFIX}{name} must be a positive integer, got {value!r}")
    return value


#: The longest duration a setting may name: a date that far back or ahead is one Python
#: (and a browser, for the referral cookie) can still write. 100 years is plenty.
MAX_DAYS = 36_500
MAX_SECONDS = MAX_DAYS * 86_400
#: SQLite takes its busy timeout in milliseconds, as a 32-bit integer: at most a day here.
MAX_BUSY_TIMEOUT = 86_400
#: A durable signal's first retry comes within the longest backoff (an hour).
MAX_RETRY_DELAY = 3_600


def _days(name: str, value: Any, least: int) -> int:
    """A whole number of days from ``least`` to :data:`MAX_DAYS` (100 years)."""
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= MAX_DAYS:
        raise ConfigurationError(
            f"{PREFIX}{name} must be a whole number of days from {least} to {MAX_DAYS}"
            f" (100 years), got {value!r}"
        )
    return value


def _positive_number(name: str, value: Any, *, at_most: float) -> float:
    """A number of seconds above 0 and at most ``at_most`` (never NaN or infinite)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value <= at_most  # NaN fails every comparison
    ):
        raise ConfigurationError(
            f"{PREFIX}{name} must be a number of seconds above 0 and at most {at_most:g},"
            f" got {value!r}"
        )
    return float(value)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        allowed = " or ".join(repr(choice) for choice in choices)
        raise ConfigurationError(f"{PREFIX}{name} must be {allowed}, got {value!r}")
    return str(value)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{PREFIX}{name} must be True or False, got {value!r}")
    return value


def _optional_str(name: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise _fail(name, "a non-empty string or None", value)
    return value


def _url_prefix(value: Any) -> str:
    return url_path(f"{PREFIX}URL_PREFIX", value)


def url_path(name: str, value: Any) -> str:
    """A blueprint's URL prefix, ``name``'s value (the config key, or ``init_app``'s
    ``url_prefix=``): empty or a path starting with ``/``, without its final ``/``."""
    if not isinstance(value, str) or (value and not value.startswith("/")):
        raise ConfigurationError(f"{name} must be a path starting with '/', got {value!r}")
    return value.rstrip("/")


def _livemode(value: Any, api_key: Any) -> bool:
    """The mode of customers recorded at signup: as set, else the API key's mode, else test."""
    if value is None:
        return isinstance(api_key, str) and is_live_key(api_key)
    return _bool("LIVEMODE", value)


def is_live_key(key: str) -> bool:
    """Whether a Stripe secret (or restricted) key is a live-mode one."""
    return key.startswith(("sk_live_", "rk_live_"))


def _redirect(value: Any) -> str | None:
    """A local path or an endpoint name: never a URL to another site.

    Browsers drop tabs and newlines anywhere in a URL, trim spaces and control
    characters at its ends, and read ``\\`` as ``/``: so ``"/\\t/evil.example"`` goes
    to ``//evil.example``. Any of those, a scheme (``:``) or a leading ``//`` is refused.
    """
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value
        or value != value.strip()
        or re.search(r"[\x00-\x1f\x7f\\:]", value)
        or value.startswith("//")
    ):
        raise ConfigurationError(
            f"{PREFIX}INSTALL_REDIRECT must be a local path such as '/settings' or an "
            f"endpoint name such as 'settings.stripe', got {value!r}"
        )
    return value
