"""pytest fixtures for testing a host app, loaded automatically once the package is installed.

They build on pytest-flask's ``client`` (define an ``app`` fixture, as pytest-flask asks)::

    def test_commission(stripe_events, partnerstack_signals):
        stripe_events.post("charge.succeeded", testing.charge("ch_1", amount=4200))
        assert partnerstack_signals[-1].name == "event-processed"
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import TestResponse

from . import testing


class StripeEvents:
    """Posts signed events to the app under test, through its real webhook URL."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def post(self, event_type: str, obj: dict[str, Any], **envelope: Any) -> TestResponse:
        """Wrap ``obj`` in an event of ``event_type``, sign it and post it; the response."""
        return testing.post_event(self.client, testing.event(event_type, obj, **envelope))

    def post_event(self, event: dict[str, Any], **options: Any) -> TestResponse:
        """Post a whole event (a dict, or a raw JSON string) as it is."""
        return testing.post_event(self.client, event, **options)


@pytest.fixture
def stripe_events(request: pytest.FixtureRequest) -> StripeEvents:
    """Signed Stripe events posted to the app through pytest-flask's ``client``."""
    return StripeEvents(request.getfixturevalue("client"))


@pytest.fixture
def partnerstack_signals() -> Iterator[list[testing.SentSignal]]:
    """Every signal the extension sends during the test, in order."""
    with testing.record_signals() as sent:
        yield sent


@pytest.fixture
def fake_stripe() -> Iterator[testing.FakeStripeAPI]:
    """The Stripe API, faked at the ``stripe`` package's HTTP client: nothing leaves the test."""
    with testing.fake_stripe_api() as api:
        yield api
