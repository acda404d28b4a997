"""Stripe's OAuth token exchange and deauthorization, kept out of stripe-python's debug output.

With ``STRIPE_LOG=debug`` (or ``stripe.log = "debug"``) stripe-python *prints* every
request and response body to stderr, besides logging it, and the token exchange's
response holds the connected account's access and refresh tokens. No per-call option
turns that off, and switching it off process-wide would change what other threads of
the host see. So these two calls go straight to the ``stripe`` package's HTTP client
(``stripe.default_http_client``, the seam its own requestor uses, with its retries
and proxy): their bodies never reach stripe's log functions, whatever the environment.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import stripe
from stripe._http_client import new_default_http_client

from .redaction import redact
from .values import ID_LENGTH, STRIPE_ID


class OAuthFailed(stripe.StripeError):
    """Stripe answered an OAuth call with an error; ``code`` is Stripe's error code only.

    ``description`` is Stripe's explanation, kept out of the message and redacted: for a
    wrong key it can quote the key's beginning.
    """

    def __init__(self, status: int, code: str | None, description: str | None = None) -> None:
        super().__init__(f"Stripe refused the OAuth call ({status}, {code or 'no error code'}).")
        self.status = status
        self.code = code
        self.description = None if description is None else redact(description)


def token(api_key: str, code: str) -> dict[str, Any]:
    """Exchange an authorization code for the connected account's tokens."""
    answer = _post("/oauth/token", api_key, {"grant_type": "authorization_code", "code": code})
    account = answer.get("stripe_user_id")
    if not (isinstance(account, str) and STRIPE_ID.fullmatch(account)):
        raise OAuthFailed(200, "no_account_in_answer")  # not an answer Stripe gives
    # Nor are these: stored as they are, a wrong type would install the wrong mode (a
    # "false" string is true) or fail to store (a scope longer than its column).
    if not isinstance(answer.get("livemode", False), bool):
        raise OAuthFailed(200, "unexpected_livemode_in_answer")
    scope = answer.get("scope")
    if scope is not None and not (isinstance(scope, str) and len(scope) <= ID_LENGTH):
        raise OAuthFailed(200, "unexpected_scope_in_answer")
    for name in ("access_token", "refresh_token"):
        if not isinstance(answer.get(name, ""), str):
            raise OAuthFailed(200, f"unexpected_{name}_in_answer")
    return answer


def deauthorize(api_key: str, client_id: str, stripe_user_id: str) -> dict[str, Any]:
    """Disconnect ``stripe_user_id`` from the platform ``client_id``."""
    return _post(
        "/oauth/deauthorize", api_key, {"client_id": client_id, "stripe_user_id": stripe_user_id}
    )


def is_not_connected(error: OAuthFailed) -> bool:
    """True when Stripe says the account is not (or no longer) connected.

    Stripe answers ``invalid_client`` for that, but also for a client id that is not the
    platform's, or a key of the other mode; only its description tells them apart. A
    wrong key (``invalid_request_error``) leaves the account connected.
    """
    described = (error.description or "").lower()
    return error.code == "invalid_client" and "not connected" in described


def _post(path: str, api_key: str, params: dict[str, str]) -> dict[str, Any]:
    client = stripe.default_http_client or new_default_http_client(
        verify_ssl_certs=stripe.verify_ssl_certs, proxy=stripe.proxy
    )
    headers = {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": "application/x-www-form-urlencoded",
        "User-Agent": "flask-partnerstack-stripe",
    }
    body, status, _ = client.request_with_retries(
        "post",
        stripe.connect_api_base + path,
        headers,
        urlencode(params),
        max_network_retries=stripe.max_network_retries,
    )
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not 200 <= status < 300 or not isinstance(data, dict):
        raise OAuthFailed(status, _error_code(data), _error_description(data))
    return data


def _error_code(data: Any) -> str | None:
    """Stripe's error code: OAuth errors say ``"error": "invalid_grant"``; API errors nest it."""
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict):
        error = error.get("code") or error.get("type")
    return error if isinstance(error, str) else None


def _error_description(data: Any) -> str | None:
    """Stripe's explanation: ``error_description`` in OAuth errors, nested in API errors."""
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    described = error.get("message") if isinstance(error, dict) else data.get("error_description")
    return described if isinstance(described, str) else None
