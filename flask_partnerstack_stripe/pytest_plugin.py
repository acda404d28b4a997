"""pytest fixtures for testing a host app, loaded automatically once the package is installed.

They build on pytest-flask's ``client`` (define an ``app`` fixture, as pytest-flask asks)::

    def test_commission(stripe_events, partnerstack_signals):
        stripe_events.post("charge.succeeded", testing.charge("ch_1", amount=4200))
        assert partnerstack_signals[-1].name == "event-processed"

pytest loads this module in every test run of every project that has the package
installed, so it imports only pytest: Flask, stripe and SQLAlchemy are imported by
the fixtures, when a test asks for one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from werkzeug.test import TestResponse

    from .testing import FakeStripeAPI, SentSignal


class StripeEvents:
    """Posts signed events to the app under test, through its real webhook URL."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def post(self, event_type: str, obj: dict[str, Any], **envelope: Any) -> TestResponse:
        """Wrap ``obj`` in an event of ``event_type``, sign it and post it; the response."""
        from . import testing

        return testing.post_event(self.client, testing.event(event_type, obj, **envelope))

    def post_event(self, event: dict[str, Any], **options: Any) -> TestResponse:
        """Post a whole event (a dict, or a raw JSON string) as it is."""
        from . import testing

        return testing.post_event(self.client, event, **options)


@pytest.fixture
def stripe_events(request: pytest.FixtureRequest) -> StripeEvents:
    """Signed Stripe events posted to the app through pytest-flask's ``client``."""
    try:
        return StripeEvents(request.getfixturevalue("client"))
    except pytest.FixtureLookupError:
        pass  # failed below, outside the except block, so pytest shows only our message
    pytest.fail(
        "stripe_events posts through pytest-flask's `client` fixture, which is missing: "
        "pip install 'flask-partnerstack-stripe[testing]' (it brings pytest-flask) and "
        "define an `app` fixture that returns your Flask app.",
        pytrace=False,
    )


@pytest.fixture
def partnerstack_signals() -> Iterator[list[SentSignal]]:
    """Every signal the extension sends during the test, in order."""
    from . import testing

    with testing.record_signals() as sent:
        yield sent


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripeAPI]:
    """The Stripe API, faked at the ``stripe`` package's HTTP client: nothing leaves the test."""
    from . import testing

    with testing.fake_stripe_api() as api:
        yield api
