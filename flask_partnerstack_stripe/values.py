"""What a value from Stripe, or from a host's call, must be before the database stores it.

The limits are what Stripe can send, and the columns are that wide: a value is
stored whole or refused, never cut, because a cut identifier can name somebody else.
"""

from __future__ import annotations

import re
import urllib.parse
from datetime import datetime, timezone
from typing import Any

#: Stripe object ids (``cus_``, ``ch_``, ``in_``, ``acct_``, ``evt_`` ...).
ID_LENGTH = 255
#: Stripe metadata values: ``customer_key``, ``partner_key``, ``product_key``.
METADATA_LENGTH = 500
#: RFC 5321's longest address (64 + 1 + 255).
EMAIL_LENGTH = 320
NAME_LENGTH = 500
#: A Checkout Session's ``client_reference_id`` (Stripe: "up to 200 characters").
CLIENT_REFERENCE_LENGTH = 200
#: Enumerated fields Stripe sends (a refund's ``status``): the column's width.
STATUS_LENGTH = 32
#: Amounts are integers in minor units that a 64-bit signed column holds.
MAX_AMOUNT = 2**63 - 1

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Stripe ids and event types: printable ASCII without spaces.
STRIPE_ID = re.compile(r"[\x21-\x7e]{1,255}")


class InvalidValue(ValueError):
    """A value cannot be stored as it is; the message names the field, never a secret."""


def text(value: Any, limit: int = ID_LENGTH, *, field: str = "value") -> str | None:
    """A string field from Stripe, trimmed, or None when it is absent.

    Anything that is not a string, is blank, or holds what no database column takes
    (NUL, lone surrogates) is treated as absent rather than failing the event. A
    string longer than ``limit`` raises :class:`InvalidValue`: it is never cut.
    """
    if not isinstance(value, str) or "\x00" in value:
        return None
    value = value.strip()
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if len(value) > limit:
        raise InvalidValue(f"{field} is longer than {limit} characters.")
    return value or None


def object_id(value: Any, *, field: str) -> str | None:
    """A Stripe id, or the id of an expanded object (``{"id": ...}``); None if absent."""
    if isinstance(value, dict):
        value = value.get("id")
    return text(value, ID_LENGTH, field=field)


def mapping(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one: a missing or mistyped object."""
    return value if isinstance(value, dict) else {}


def metadata(obj: dict[str, Any]) -> dict[str, Any]:
    """A Stripe object's ``metadata``, or an empty one."""
    return mapping(obj.get("metadata"))


def metadata_value(meta: dict[str, Any], name: str) -> str | None:
    """The metadata value ``name`` (at most 500 characters, Stripe's limit), or None."""
    return text(meta.get(name), METADATA_LENGTH, field=f"metadata.{name}")


def lower_ascii(value: str) -> str:
    """``value`` with A-Z lowered and every other character as it was.

    Unicode case mapping can change a string's length (``"İ".lower()`` is two
    characters) and fold look-alikes onto ASCII (the Kelvin sign lowers to ``k``),
    so an address that differs from another only by such a character stays distinct.
    """
    return value.translate(_ASCII_LOWER)


def normal_email(value: Any, *, field: str = "email") -> str | None:
    """An email as it is matched and stored: trimmed, A-Z lowered; None if it has no ``@``."""
    if isinstance(value, str):
        value = lower_ascii(value)
    email = text(value, EMAIL_LENGTH, field=field)
    return email if email is not None and "@" in email else None


def currency(value: Any) -> str:
    """An ISO currency code, lowered. Stripe sends one with every payment, refund and
    dispute; one that is missing, null or not a string is invalid like a malformed one,
    since a payment recorded in no currency would be paid out in none."""
    code = text(value, field="currency")
    code = "" if code is None else lower_ascii(code)
    if not re.fullmatch(r"[a-z]{3}", code):
        raise InvalidValue("currency must be a three-letter ISO code.")
    return code


def amount(value: Any, *, field: str = "amount") -> int | None:
    """An amount in minor units (0 to 2**63-1), or None when absent (missing or null)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_AMOUNT:
        raise InvalidValue(f"{field} must be an integer from 0 to 2**63-1.")
    return value


def is_http_url(value: str) -> bool:
    """Whether ``value`` is an absolute http(s) URL (a command's ``--url``, ``--base-url``)."""
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:  # an unclosed [IPv6 address]
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def signed_amount(value: Any, *, field: str) -> int | None:
    """An amount that may be below 0 (an invoice's ``total`` when credits exceed its
    charges), or None when absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not abs(value) <= MAX_AMOUNT:
        raise InvalidValue(f"{field} must be an integer from -(2**63-1) to 2**63-1.")
    return value


def argument(
    name: str, value: Any, limit: int, *, optional: bool = True, email: bool = False
) -> str | None:
    """A string argument of a Python API call, checked; :class:`ValueError` names ``name``.

    A blank optional argument (an empty form field) is None.
    """
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} must be a non-empty string, got None.")
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}.")
    if _CONTROL.search(value):
        raise ValueError(f"{name} must not contain NUL or other control characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} must be valid Unicode text (no lone surrogates).") from None
    if not value.strip():
        if optional:
            return None  # a form's empty field: absent, as in Stripe's objects
        raise ValueError(f"{name} must not be blank.")
    checked = normal_email(value, field=name) if email else value.strip()
    if checked is None:
        raise ValueError(f"{name} must be an email address.")
    if len(checked) > limit:
        raise ValueError(f"{name} is longer than {limit} characters.")
    return checked


def mode_argument(name: str, value: Any) -> bool:
    """A Python API's mode argument: True (live) or False (test); :class:`ValueError`
    names ``name`` for anything else."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True (live), False (test) or None, got {value!r}.")
    return value


def currency_code(name: str, value: Any) -> str:
    """A currency a host names (a Python API's argument, a command's option), lowered;
    :class:`ValueError` names ``name`` for anything but a three-letter code."""
    if not (isinstance(value, str) and re.fullmatch(r"[A-Za-z]{3}", value)):
        raise ValueError(f"{name} must be a three-letter code such as 'usd', got {value!r}.")
    return value.lower()


def utc_datetime(name: str, value: Any) -> datetime | None:
    """A moment a Python API was given (None stays None), in UTC: the columns hold UTC
    and not every database keeps an offset, so an aware value in another zone would be
    compared by its wall-clock time. A naive value is taken as UTC. :class:`ValueError`
    names ``name`` for anything but a datetime."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ValueError(f"{name} must be a datetime, got {type(value).__name__}.")
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


#: Currencies whose minor unit is the unit itself, and those with three decimals, as
#: Stripe's API amounts count them (docs.stripe.com/currencies); every other has two.
ZERO_DECIMAL = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
     "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)  # fmt: skip
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


def money(amount: int, currency: str) -> str:
    """``12.34 USD`` from an amount in minor units, in integers (exact at any size):
    ``1000 JPY`` (zero-decimal), ``1.500 KWD`` (three decimals)."""
    code = currency.lower()
    decimals = 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2
    sign = "-" if amount < 0 else ""
    if decimals == 0:
        return f"{sign}{abs(amount)} {code.upper()}"
    whole, minor = divmod(abs(amount), 10**decimals)
    return f"{sign}{whole}.{minor:0{decimals}d} {code.upper()}"
