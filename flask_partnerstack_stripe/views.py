"""The ``partnerstack_stripe`` blueprint: the webhook receiver's HTTP side."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from flask import Blueprint, Flask, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import accounts, install
from .extension import State, get_state
from .status import Status
from .transactions import end_request_transaction
from .verification import InvalidEvent, verify_event

log = logging.getLogger("flask_partnerstack_stripe")

BLUEPRINT_NAME = "partnerstack_stripe"


def create_blueprint(app: Flask) -> Blueprint:
    """A fresh blueprint for ``app``: blueprints hold per-app registrations, so never share one."""
    blueprint = Blueprint(BLUEPRINT_NAME, __name__, template_folder="templates")
    blueprint.add_url_rule("/webhook", "webhook", webhook, methods=["POST"])
    blueprint.add_url_rule(
        "/webhook/<endpoint_id>", "endpoint_webhook", endpoint_webhook, methods=["POST"]
    )
    blueprint.add_url_rule("/install", "install", install.install)
    blueprint.add_url_rule("/install/callback", "install_callback", install.install_callback)
    blueprint.add_url_rule("/uninstall", "uninstall", install.uninstall, methods=["POST"])
    blueprint.register_error_handler(HTTPException, _http_error)

    _exempt_from_csrf(app)
    return blueprint


def _exempt_from_csrf(app: Flask) -> None:
    """Exempt the webhooks from Flask-WTF's CSRF protection, if the app has it: Stripe
    cannot send a CSRF token; the signature is what authenticates its posts.

    Flask-WTF keeps exemptions on its ``CSRFProtect``, which app factories often set up
    after ``init_app``: then a hook registered now makes them on the first request, before
    the check ``CSRFProtect`` registers later runs (hooks run in the order they were
    registered, and none can be registered once the app has served a request).
    """

    def exempt(csrf: Any) -> None:
        csrf.exempt(webhook)
        csrf.exempt(endpoint_webhook)

    csrf = app.extensions.get("csrf")
    if csrf is not None:
        exempt(csrf)
        return
    if importlib.util.find_spec("flask_wtf") is None:
        return  # no Flask-WTF to set up later: no hook on every request
    looked: list[bool] = []  # this app's: whether a request has looked (and exempted)

    @app.before_request
    def exempt_once_set_up() -> None:
        if not looked:
            later = app.extensions.get("csrf")
            if later is not None:
                exempt(later)  # idempotent: concurrent first requests may all get here
            looked.append(True)  # only once exempted, or a concurrent request skips ahead


def webhook() -> ResponseReturnValue:
    """The endpoint for the app's own account and for Connect and Stripe App events."""
    state = get_state()
    return _receive(state, state.settings.webhook_secrets, stripe_account_id=None)


def endpoint_webhook(endpoint_id: str) -> ResponseReturnValue:
    """A manual endpoint: one connected account, verified with that endpoint's secret only."""
    state = get_state()
    account = accounts.find_endpoint(state.db.session(), state.models, endpoint_id)
    if account is None:
        return jsonify(error="There is no webhook endpoint at this URL."), 404
    secrets = (account.endpoint_secret,) if account.endpoint_secret else ()
    return _receive(state, secrets, stripe_account_id=account.stripe_account_id)


def _receive(
    state: State, secrets: tuple[str, ...], stripe_account_id: str | None
) -> ResponseReturnValue:
    """Verify, then the receive pipeline (store, apply, commit, signal), then answer."""
    payload = _read_body(state.settings.max_body)
    try:
        event = verify_event(
            payload,
            request.headers.get("Stripe-Signature"),
            secrets,
            state.settings.signature_tolerance,
        )
    except InvalidEvent as error:
        log.warning("Refused a webhook request: %s", error)
        return jsonify(error=str(error)), 400

    session = state.db.session()
    end_request_transaction(session)
    outcome = state.receiver.run(
        session, event, payload.decode("utf-8"), stripe_account_id=stripe_account_id
    )
    if outcome.status == Status.FAILED:
        if state.settings.processing == "celery":  # the request only stores the event
            message = (
                "The event could not be stored; nothing was recorded. It will be stored "
                "and applied when Stripe redelivers it."
            )
        elif outcome.recorded:
            message = (
                "The event could not be applied. It is stored as failed and will be "
                "applied again when Stripe redelivers it or when it is replayed."
            )
        else:
            message = (
                "The event could not be applied, and its failure could not be stored "
                "either; nothing was recorded. It will be applied when Stripe redelivers it."
            )
        return jsonify(error=message), 500
    body: dict[str, Any] = {"status": outcome.status, "event": event["id"]}
    if outcome.reason:
        body["reason"] = outcome.reason
    return jsonify(body), 200


def _read_body(max_body: int) -> bytes:
    """The raw body, refused with 413 once it passes ``max_body`` without reading it all.

    A Content-Length over the cap is refused before any byte is read. A streamed
    body is read one byte past the cap at most: Werkzeug cuts it there silently,
    so the extra byte is how we tell a body that fits from one that was cut.
    """
    request.max_content_length = max_body + 1
    payload = request.get_data(cache=False)
    if len(payload) > max_body:
        raise RequestEntityTooLarge()
    return payload


#: The endpoints Stripe calls: their errors are JSON. The install pages are seen by
#: people in a browser: their errors are Flask's HTML pages (or the host's own).
JSON_ENDPOINTS = frozenset({f"{BLUEPRINT_NAME}.webhook", f"{BLUEPRINT_NAME}.endpoint_webhook"})


def _http_error(error: HTTPException) -> ResponseReturnValue:
    if request.endpoint in JSON_ENDPOINTS:
        return jsonify(error=error.description), error.code or 500
    return error
