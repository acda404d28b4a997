"""Turn a signed webhook body into a trusted event dict, or say exactly why not.

Signatures are checked by ``stripe.WebhookSignature.verify_header``; the body is
then parsed with plain ``json.loads`` because building stripe-python's object
tree costs far more than the check and nothing here needs it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from typing import Any

import stripe


class InvalidEvent(ValueError):
    """The request is not a verified Stripe event; the message is safe to show the sender."""


def verify_event(
    payload: bytes,
    signature_header: str | None,
    secrets: Iterable[str],
    tolerance: int,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """The event in ``payload`` once its signature and timestamp are good."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEvent("The body is not UTF-8.") from None
    verify_signature(text, signature_header, secrets, tolerance, now=now)
    try:
        event = json.loads(text)
    except ValueError:
        raise InvalidEvent("The body is not valid JSON.") from None
    check_event_shape(event)
    return event  # type: ignore[no-any-return]


def verify_signature(
    text: str,
    signature_header: str | None,
    secrets: Iterable[str],
    tolerance: int,
    *,
    now: float | None = None,
) -> None:
    """Accept ``text`` if any secret signed it within ``tolerance`` seconds of now, either way."""
    if not signature_header:
        raise InvalidEvent("The Stripe-Signature header is missing.")
    reason = "No webhook signing secret is configured for this endpoint."
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, signature_header, secret, tolerance)
        except stripe.SignatureVerificationError as error:
            # stripe's messages name the header and the problem, never the secret.
            reason = error.user_message or "The signature does not match."
            continue
        break
    else:
        raise InvalidEvent(f"Signature verification failed: {reason}")
    # verify_header refuses old timestamps only; a timestamp from the future
    # would let a captured signature be replayed long after it was made.
    if _timestamp(signature_header) > (time.time() if now is None else now) + tolerance:
        raise InvalidEvent("Signature verification failed: the timestamp is in the future.")


def _timestamp(signature_header: str) -> int:
    for item in signature_header.split(","):
        name, _, value = item.partition("=")
        if name.strip() == "t":
            return int(value)
    raise InvalidEvent("Signature verification failed: no timestamp.")  # pragma: no cover


#: Stripe ids and event types: printable ASCII without spaces, as the database stores them.
_TOKEN = re.compile(r"[\x21-\x7e]{1,255}")

_EVENT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "type": str,
    "created": int,
    "livemode": bool,
    "data": dict,
}


def check_event_shape(event: Any) -> None:
    """Refuse JSON that is not a Stripe event envelope with the fields we rely on."""
    if not isinstance(event, dict) or event.get("object") != "event":
        raise InvalidEvent(
            'The body is not a Stripe event (expected an object with "object": "event").'
        )
    for field, expected in _EVENT_FIELDS.items():
        value = event.get(field)
        wrong_bool = expected is int and isinstance(value, bool)
        if not isinstance(value, expected) or wrong_bool or value in ("", None):
            raise InvalidEvent(f'The event field "{field}" is missing or has the wrong type.')
    if not _TOKEN.fullmatch(event["id"]) or not _TOKEN.fullmatch(event["type"]):
        raise InvalidEvent('The event "id" or "type" is not a Stripe identifier.')
    if not 0 <= event["created"] < 2**53:
        raise InvalidEvent('The event field "created" is not a timestamp.')
    if not isinstance(event["data"].get("object"), dict):
        raise InvalidEvent('The event field "data.object" is missing or is not an object.')
    account = event.get("account")
    if account is not None and not (isinstance(account, str) and _TOKEN.fullmatch(account)):
        raise InvalidEvent('The event field "account" must be a Stripe account id.')
