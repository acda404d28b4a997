"""Partner attribution from links: ``?ps_partner_key=`` and the referral cookie it sets."""

from __future__ import annotations

import base64
import logging
from datetime import timedelta

from flask import Request, Response, current_app
from itsdangerous import BadSignature, URLSafeSerializer

from .values import METADATA_LENGTH

log = logging.getLogger("flask_partnerstack_stripe")

QUERY_PARAMETER = "ps_partner_key"
COOKIE_NAME = "ps_partner_key"
_SALT = "flask-partnerstack-stripe.referral"


#: The base64 of the longest partner key (500 characters, up to 4 bytes each in UTF-8).
MAX_ENCODED = 4 * -(-4 * METADATA_LENGTH // 3)


def decode_partner_key(value: str) -> str:
    """The partner key carried, base64-encoded, in a ``ps_partner_key`` query parameter.

    Standard and URL-safe alphabets are accepted, with or without ``=`` padding.
    Anything else raises :class:`ValueError`.
    """
    if not isinstance(value, str):
        raise ValueError("A partner key must be a base64 string.")
    encoded = value.strip().replace("-", "+").replace("_", "/").rstrip("=")
    if not encoded or len(encoded) % 4 == 1 or len(encoded) > MAX_ENCODED:
        raise ValueError(f"{value!r:.80} is not a base64-encoded partner key.")
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        key = raw.decode("utf-8")
    except ValueError:  # not base64 (non-ASCII text included), or not UTF-8 inside
        raise ValueError(f"{value!r:.80} is not a base64-encoded partner key.") from None
    key = key.strip()  # as every other way in trims it: one partner, one key
    if not _usable(key):
        raise ValueError(f"{value!r:.80} does not decode to a usable partner key.")
    return key


def _usable(key: str) -> bool:
    return bool(key) and key.isprintable() and len(key) <= METADATA_LENGTH


def _serializer() -> URLSafeSerializer | None:
    secret = current_app.secret_key
    return URLSafeSerializer(secret, salt=_SALT) if secret else None


def remember_referral(response: Response, request: Request, days: int) -> Response:
    """Set the referral cookie when the request came through a partner link (last click wins)."""
    value = request.args.get(QUERY_PARAMETER)
    if not value:
        return response
    try:
        partner_key = decode_partner_key(value)
    except ValueError:
        # Its length only: anyone can put anything, of any size, in a link.
        log.info("Ignored a referral link with no usable partner key (%d characters).", len(value))
        return response
    serializer = _serializer()
    if serializer is None:
        log.warning("Cannot remember a referral: the app has no SECRET_KEY to sign the cookie.")
        return response
    response.set_cookie(
        COOKIE_NAME,
        serializer.dumps(partner_key),
        max_age=timedelta(days=days),
        httponly=True,
        samesite="Lax",
        secure=request.is_secure,
    )
    return response


def referred_partner_key(request: Request) -> str | None:
    """The partner key from the request's referral cookie, if it is there and untampered."""
    cookie = request.cookies.get(COOKIE_NAME)
    serializer = _serializer()
    if not cookie or serializer is None:
        return None
    try:
        value = serializer.loads(cookie)
    except BadSignature:
        return None
    # Checked again as it is read: a cookie signed before a limit changed, or by other code
    # of the app with the same key and salt, is a partner key only if one could be.
    if not isinstance(value, str):
        return None
    value = value.strip()  # a cookie from before partner keys were trimmed
    return value if _usable(value) else None
