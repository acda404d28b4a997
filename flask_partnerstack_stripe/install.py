"""Connecting Stripe accounts through OAuth: install, its callback, and uninstall.

The host decides who may do this (``@partnerstack.install_guard``); without a guard
every request is refused. The OAuth ``state`` lives in the user's session (so the
callback comes from the browser that started) and in the database, bound to the
mode asked for; the callback deletes the row, so a replayed session cookie cannot
use it twice. Redirects go to configured places only, never to a URL taken from
the request. Tokens are stored, never logged, printed or shown (see ``oauth.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import timedelta
from urllib.parse import urlencode, urlsplit

import sqlalchemy as sa
import stripe
from flask import abort, current_app, g, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from werkzeug.routing import BuildError

from . import accounts, oauth, signals
from .extension import State, get_state
from .models import utcnow
from .redaction import error_line, parameters_hidden
from .upserts import delete_returning
from .values import STRIPE_ID

log = logging.getLogger("flask_partnerstack_stripe")

STATE_KEY = "partnerstack_stripe_install"
#: How long an install link may take to come back from Stripe.
STATE_LIFETIME = timedelta(minutes=15)
STRIPE_APP_AUTHORIZE_URL = "https://marketplace.stripe.com/oauth/v2/authorize"


def _guard(state: State, action: str, stripe_account_id: str | None = None) -> None:
    guard = state.extension._install_guard
    if guard is None:
        abort(
            403,
            "Installing and uninstalling Stripe accounts is off until the app registers "
            "a guard with @partnerstack.install_guard.",
        )
    if not guard(action, stripe_account_id):
        abort(403, "You are not allowed to connect or disconnect Stripe accounts.")


def _mode(state: State) -> bool:
    """The mode asked for (``?mode=test`` or ``live``), default live when a live key exists."""
    mode = request.args.get("mode") or request.form.get("mode")
    if mode not in (None, "test", "live"):
        abort(400, "mode must be 'test' or 'live'.")
    livemode = mode == "live" if mode else state.settings.api_key_for(True) is not None
    if state.settings.api_key_for(livemode) is None:
        name = "live" if livemode else "test"
        abort(400, f"No Stripe secret key is configured for {name} mode.")
    return livemode


def install() -> ResponseReturnValue:
    """Send the user to Stripe to authorize the app, with a one-time state."""
    state = get_state()
    _guard(state, "install")
    if state.settings.client_id is None:
        abort(400, "PARTNERSTACK_STRIPE_CLIENT_ID is not configured.")
    if not current_app.secret_key:
        # Checked before the state is stored: the session that keeps it needs the key.
        # The detail is for the operator's log, not for whoever clicked install.
        log.error("Install needs SECRET_KEY: the install state is kept in the signed session.")
        abort(500, "The app is not set up for installs yet; its log says why.")
    livemode = _mode(state)
    nonce = secrets.token_urlsafe(32)
    _issue_state(state, nonce, livemode)
    session[STATE_KEY] = {"state": nonce, "livemode": livemode}
    params = {
        "client_id": state.settings.client_id,
        "redirect_uri": url_for(".install_callback", _external=True),
        "state": nonce,
    }
    if state.settings.install_method == "stripe_app":
        return redirect(f"{STRIPE_APP_AUTHORIZE_URL}?{urlencode(params)}")
    authorize_url = stripe.OAuth.authorize_url(
        scope=state.settings.install_scope,
        **params,  # type: ignore[arg-type]
    )
    return redirect(authorize_url)


def install_callback() -> ResponseReturnValue:
    """Check the state, exchange the code, store the account, say so."""
    state = get_state()
    _guard(state, "install")
    expected = session.pop(STATE_KEY, None)
    given = request.args.get("state", "")
    # Bytes, so a state with non-ASCII characters is just wrong (compare_digest
    # refuses non-ASCII str); then the server-side copy, used up here, once.
    same_browser = isinstance(expected, dict) and hmac.compare_digest(
        str(expected.get("state", "")).encode(), given.encode("utf-8", "replace")
    )
    livemode = _use_state(state, given) if same_browser else None
    if livemode is None:
        return _page("Installation not completed", "This install link is invalid, expired "
                     "or was already used. Start the installation again.", 400)  # fmt: skip
    if request.args.get("error"):
        return _page("Installation cancelled", "Stripe reports that access was not "
                     "granted. Nothing was installed.", 400)  # fmt: skip
    code = request.args.get("code")
    if not code:
        return _page("Installation not completed", "Stripe sent no authorization code.", 400)

    try:
        token = oauth.token(state.settings.api_key_for(livemode) or "", code)
    except oauth.OAuthFailed as error:
        # Stripe refuses a bad or used code with a 400 (invalid_grant). A rate limit, our
        # own key refused or its 5xx is no verdict on the code: try again later.
        if error.status in (401, 403, 429) or error.status >= 500:
            return _stripe_unreachable(error)
        log.warning("Stripe refused the OAuth code exchange: %s", error)
        return _page("Installation not completed", "Stripe did not accept the "
                     "authorization. Start the installation again.", 400)  # fmt: skip
    except stripe.StripeError as error:
        return _stripe_unreachable(error)

    db_session = state.db.session()
    with parameters_hidden(), state.unit_of_work(db_session):
        account = accounts.install(
            db_session,
            state.models,
            str(token["stripe_user_id"]),
            bool(token.get("livemode", livemode)),
            scope=token.get("scope"),
            access_token=token.get("access_token"),
            refresh_token=token.get("refresh_token"),
        )
        installed = state.receiver.record(
            db_session, [(signals.account_installed, {"account": account})]
        )
    state.receiver.deliver(db_session, installed)
    mode = "live" if account.livemode else "test"
    return _done(
        state,
        "App installed",
        f"The app is installed for the Stripe account {account.stripe_account_id} in {mode} mode.",
    )


def _stripe_unreachable(error: stripe.StripeError) -> ResponseReturnValue:
    """Stripe failed (a network error, a rate limit, our key refused, its 5xx): not a
    refusal of the code. The state is used up, so the user starts again, later."""
    log.warning("The OAuth code exchange failed: %s", error_line(error))
    return _page("Installation not completed", "Stripe could not finish the installation "
                 "just now. Start the installation again in a few minutes.", 502)  # fmt: skip


def _state_hash(nonce: str) -> str:
    return hashlib.sha256(nonce.encode("utf-8", "replace")).hexdigest()


def _issue_state(state: State, nonce: str, livemode: bool) -> None:
    """Keep the state server-side until it is used or expires.

    States nobody came back with would pile up: the expired ones are deleted here,
    where rows are written, so the table stays as small as the installs in flight.
    """
    InstallState = state.models.InstallState
    now = utcnow()
    db_session = state.db.session()
    with state.unit_of_work(db_session):
        db_session.execute(sa.delete(InstallState).where(InstallState.expires_at < now))
        db_session.execute(
            sa.insert(InstallState).values(
                state_hash=_state_hash(nonce),
                livemode=livemode,
                created_at=now,
                expires_at=now + STATE_LIFETIME,
            )
        )


def _use_state(state: State, nonce: str) -> bool | None:
    """Delete the unexpired state ``nonce``; its mode, or None if it was not there.

    One statement: of two callbacks racing with the same state, one deletes the row.
    """
    InstallState = state.models.InstallState
    db_session = state.db.session()
    with state.unit_of_work(db_session):
        rows = delete_returning(
            db_session,
            InstallState.__table__,
            sa.and_(
                InstallState.state_hash == _state_hash(nonce),
                InstallState.expires_at > utcnow(),
            ),
            InstallState.livemode,
        )
    return bool(rows[0].livemode) if rows else None


def uninstall() -> ResponseReturnValue:
    """Deauthorize the account at Stripe and mark it uninstalled (POST, same-site only)."""
    state = get_state()
    stripe_account_id = request.form.get("stripe_account_id", "")
    if not (stripe_account_id.startswith("acct_") and STRIPE_ID.fullmatch(stripe_account_id)):
        abort(400, "stripe_account_id must be a Stripe account id (acct_...).")
    _guard(state, "uninstall", stripe_account_id)
    _require_same_site()
    livemode = _mode(state)

    db_session = state.db.session()
    account = accounts.find_account(db_session, state.models, stripe_account_id, livemode)
    if account is None:
        abort(404, "That Stripe account is not connected in this mode.")
    if account.uninstalled_at is None:
        try:
            oauth.deauthorize(
                state.settings.api_key_for(livemode) or "",
                state.settings.client_id or "",
                stripe_account_id,
            )
        except oauth.OAuthFailed as error:
            if not oauth.is_not_connected(error):
                log.warning("Deauthorizing %s failed: %s", stripe_account_id, error)
                abort(502, "Stripe could not disconnect the account; try again.")
            # Already disconnected on Stripe's side: end in the same state.
            log.info("Stripe says %s was already deauthorized", stripe_account_id)
        except stripe.StripeError as error:
            log.warning("Deauthorizing %s failed: %s", stripe_account_id, type(error).__name__)
            abort(502, "Stripe could not be reached to disconnect the account; try again.")
    with state.unit_of_work(db_session):
        uninstalled = accounts.uninstall(db_session, state.models, stripe_account_id, livemode)
        notifications = state.receiver.record(
            db_session,
            [(signals.account_uninstalled, {"account": uninstalled, "event": None})]
            if uninstalled is not None
            else [],
        )
    state.receiver.deliver(db_session, notifications)
    mode = "live" if livemode else "test"
    return _done(
        state,
        "App uninstalled",
        f"The app is uninstalled from the Stripe account {stripe_account_id} in {mode} mode.",
    )


def _require_same_site() -> None:
    """Refuse cross-site posts: Flask-WTF's token when it checked this one, else the Origin.

    Only a token it validated counts (``g.csrf_valid``): an app may have ``CSRFProtect``
    and not check this view (``WTF_CSRF_CHECK_DEFAULT = False``, or checks turned off).
    """
    if g.get("csrf_valid", False):
        return  # CSRFProtect validated this post's token before the view ran
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    expected = urlsplit(request.host_url)
    if origin:
        given = urlsplit(origin)
        if (given.scheme, given.netloc) == (expected.scheme, expected.netloc):
            return
    elif request.headers.get("Sec-Fetch-Site") == "same-origin":
        return
    abort(403, "Uninstall must be posted from this site.")


def local_url(target: str) -> str:
    """``INSTALL_REDIRECT`` as a URL: a path as it is, an endpoint name built (or
    :class:`~werkzeug.routing.BuildError`)."""
    return target if target.startswith("/") else url_for(target)


def _done(state: State, title: str, message: str) -> ResponseReturnValue:
    """``INSTALL_REDIRECT``, or a page saying what was done. It comes after the commit, so
    an endpoint name that builds no URL is logged and the page shown: a 500 would say
    that nothing was done (``flask partnerstack check`` reports such a name)."""
    target = state.settings.install_redirect
    if target:
        try:
            return redirect(local_url(target))
        except BuildError:
            log.error(
                "PARTNERSTACK_STRIPE_INSTALL_REDIRECT %r names no endpoint of the app.", target
            )
    return _page(title, message, 200)


def _page(title: str, message: str, status: int) -> tuple[str, int]:
    return render_template("partnerstack_stripe/message.html", title=title, message=message), status
