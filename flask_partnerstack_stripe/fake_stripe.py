"""Stripe's HTTP API, faked at the ``stripe`` package's HTTP-client seam, for tests."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import stripe

from .redaction import redact

#: Form fields of Stripe's OAuth calls that carry a secret.
_SECRET_PARAMS = frozenset({"client_secret", "refresh_token", "access_token"})


@dataclass
class FakeRequest:
    """One call the code under test made to the Stripe API."""

    method: str
    host: str
    path: str
    params: dict[str, list[str]]
    headers: dict[str, str]

    def __repr__(self) -> str:
        # A failed assertion on ``requests`` prints it: not the API key it was sent with.
        headers = {k: "[redacted]" if k.lower() == "authorization" else v
                   for k, v in self.headers.items()}  # fmt: skip
        params = {k: ["[redacted]"] if k in _SECRET_PARAMS else v for k, v in self.params.items()}
        return redact(
            f"FakeRequest(method={self.method!r}, host={self.host!r}, path={self.path!r},"
            f" params={params!r}, headers={headers!r})"
        )


class FakeStripeAPI(stripe.HTTPClient):
    """Stripe's HTTP API, faked at the ``stripe`` package's HTTP-client seam.

    ``api.reply("GET", "/v1/invoice_payments", {...})`` sets the JSON answered to a
    path (a callable gets the :class:`FakeRequest` and returns the JSON, or a
    ``(json, status)`` pair); ``api.requests`` lists what was asked. Install it
    with :func:`fake_stripe_api`. Nothing leaves the machine.
    """

    name = "partnerstack-fake"

    def __init__(self) -> None:
        super().__init__()
        self.replies: dict[tuple[str, str], Any] = {}
        self.requests: list[FakeRequest] = []

    def reply(self, method: str, path: str, body: Any) -> None:
        self.replies[(method.upper(), path)] = body

    def request(
        self, method: str, url: str, headers: Any, post_data: Any = None, **_: Any
    ) -> tuple[str, int, dict[str, str]]:
        parts = urlsplit(url)
        query = parts.query if method.lower() == "get" else (post_data or "")
        if isinstance(query, bytes):
            query = query.decode()
        request = FakeRequest(
            method.upper(), parts.netloc, parts.path, parse_qs(query), dict(headers or {})
        )
        self.requests.append(request)
        reply = self.replies.get((request.method, request.path))
        if reply is None:
            error = {"error": {"type": "invalid_request_error", "message": "No fake reply."}}
            return json.dumps(error), 404, {}
        body = reply(request) if callable(reply) else reply
        status = 200
        if isinstance(body, tuple):
            body, status = body
        return json.dumps(body), status, {"request-id": "req_" + secrets.token_hex(8)}

    def request_stream(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover
        raise NotImplementedError("The fake Stripe API does not stream.")

    def close(self) -> None:
        pass


@contextmanager
def fake_stripe_api() -> Iterator[FakeStripeAPI]:
    """Route every call of the ``stripe`` package to a :class:`FakeStripeAPI` for the block."""
    api = FakeStripeAPI()
    previous = stripe.default_http_client
    stripe.default_http_client = api
    try:
        yield api
    finally:
        stripe.default_http_client = previous
