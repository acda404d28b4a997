"""Turn a signed webhook body into a trusted event dict, or say exactly why not.

Signatures are checked by ``stripe.WebhookSignature.verify_header``; the body is
then parsed with plain ``json.loads`` because building stripe-python's object
tree costs far more than the check and nothing here needs it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import stripe

from .rules import check_values
from .values import STRIPE_ID, InvalidValue

#: Stripe's events nest a dozen levels at most; anything far deeper is not one, and
#: walking it (here, in a host's handler, in a JSON encoder) could exhaust the stack.
MAX_DEPTH = 64


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
    except RecursionError:
        raise InvalidEvent(_TOO_DEEP) from None
    check_depth(event)
    check_event_shape(event)
    try:
        check_values(event)
    except InvalidValue as error:
        raise InvalidEvent(f"The event cannot be stored as sent: {error}") from None
    return event  # type: ignore[no-any-return]


_TOO_DEEP = f"The body nests deeper than {MAX_DEPTH} levels: it is not a Stripe event."


def check_depth(value: Any) -> None:
    """Refuse JSON nested deeper than :data:`MAX_DEPTH`, without recursing."""
    level: list[Any] = [value] if isinstance(value, (dict, list)) else []  # `null`: no depth
    for _ in range(MAX_DEPTH):
        level = [
            child
            for container in level
            for child in (container.values() if isinstance(container, dict) else container)
            if isinstance(child, (dict, list))
        ]
        if not level:
            return
    raise InvalidEvent(_TOO_DEEP)


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
    if not signature_header.isascii():
        # Stripe's is ASCII (hex digests); the digest comparison would raise on anything else.
        raise InvalidEvent("Signature verification failed: the header is not ASCII.")
    timestamp = signed_timestamp(signature_header)
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
    if timestamp > (time.time() if now is None else now) + tolerance:
        raise InvalidEvent("Signature verification failed: the timestamp is in the future.")


def signed_timestamp(signature_header: str) -> int:
    """The header's one ``t=``, read exactly as ``stripe.WebhookSignature`` reads it.

    stripe-python takes the first item named exactly ``t``; a header with several
    (or one stripe would not see, such as `` t=``) could make us check another
    timestamp than the one stripe verified, so it is refused as ambiguous.
    """
    items = [item.split("=", 2) for item in signature_header.split(",")]
    named_t = [item for item in items if item[0].strip() == "t"]
    if len(named_t) != 1 or named_t[0][0] != "t" or len(named_t[0]) != 2:
        raise InvalidEvent(
            "Signature verification failed: the Stripe-Signature header must carry "
            "exactly one timestamp (t=...)."
        )
    try:
        return int(named_t[0][1])
    except ValueError:
        raise InvalidEvent("Signature verification failed: the timestamp is no number.") from None


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
    if not STRIPE_ID.fullmatch(event["id"]) or not STRIPE_ID.fullmatch(event["type"]):
        raise InvalidEvent('The event "id" or "type" is not a Stripe identifier.')
    if not 0 <= event["created"] < 2**53:
        raise InvalidEvent('The event field "created" is not a timestamp.')
    if not isinstance(event["data"].get("object"), dict):
        raise InvalidEvent('The event field "data.object" is missing or is not an object.')
    account = event.get("account")
    if account is not None and not (isinstance(account, str) and STRIPE_ID.fullmatch(account)):
        raise InvalidEvent('The event field "account" must be a Stripe account id.')
