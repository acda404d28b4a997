"""``flask partnerstack check --stripe``: is Stripe sending this app what its mode needs?

Reads the account's webhook endpoints through the Stripe API and compares the one
pointing at this app with the events the configured transaction source needs.
"""

from __future__ import annotations

from typing import Any

import stripe

from .config import Settings
from .readers import as_dict

#: Per transaction source, what the endpoint must send: each entry is satisfied by any
#: one of its event types.
NEEDED: dict[str, tuple[tuple[str, ...], ...]] = {
    "charge": (
        ("charge.succeeded",),
        ("charge.refunded", "refund.created"),
        ("charge.failed",),
        ("charge.dispute.closed",),
        ("customer.created", "customer.updated"),
    ),
    "invoice": (
        ("invoice.paid", "invoice.payment_succeeded"),
        ("charge.refunded", "refund.created"),
        ("charge.dispute.closed",),
        ("customer.created", "customer.updated"),
    ),
}
#: Worth sending in either mode: failed refunds give back what they took.
RECOMMENDED = (("refund.failed", "charge.refund.updated", "refund.updated"),)

#: The API versions whose payload shapes the test suite exercises.
TESTED_API_VERSIONS = (
    "2020-08-27",
    "2024-10-28.acacia",
    "2024-12-18.acacia",
    "2025-01-27.acacia",
    "2025-03-31.basil",
)


def endpoint_warnings(
    settings: Settings, webhook_path: str, account: str | None = None
) -> list[str]:
    """What is wrong with the endpoint pointing at ``webhook_path``; [] when all is well."""
    api_key = settings.api_key or settings.test_api_key
    if api_key is None:
        return ["--stripe needs PARTNERSTACK_STRIPE_API_KEY to read the webhook endpoints."]
    listing = stripe.WebhookEndpoint.list(api_key=api_key, stripe_account=account, limit=100)
    every = [as_dict(endpoint) for endpoint in listing.auto_paging_iter()]
    endpoints = [e for e in every if _path(e.get("url")) == webhook_path]
    if not endpoints:
        return [f"No webhook endpoint of this Stripe account points at {webhook_path}."]
    warnings: list[str] = []
    for endpoint in endpoints:
        warnings += _endpoint_warnings(settings, endpoint)
    return warnings


def _path(url: Any) -> str:
    if not isinstance(url, str):
        return ""
    rest = url.split("://", 1)[-1]
    return "/" + rest.split("/", 1)[1].split("?", 1)[0].rstrip("/") if "/" in rest else "/"


def _endpoint_warnings(settings: Settings, endpoint: Any) -> list[str]:
    name = f"Endpoint {endpoint.get('id')} ({endpoint.get('url')})"
    enabled = set(endpoint.get("enabled_events") or ())
    warnings = []
    if endpoint.get("status") == "disabled":
        warnings.append(f"{name} is disabled: Stripe sends it nothing.")
    if "*" not in enabled:
        source = settings.transaction_source
        for alternatives in NEEDED[source]:
            if not enabled & set(alternatives):
                wanted = " or ".join(alternatives)
                warnings.append(f"{name} does not send {wanted}, which {source} mode needs.")
        invoices = enabled & {"invoice.paid", "invoice.payment_succeeded"}
        if source == "charge" and invoices and "charge.succeeded" not in enabled:
            warnings.append(
                f"{name} sends invoice events, which charge mode does not record from: "
                "add charge.succeeded, or set PARTNERSTACK_STRIPE_TRANSACTION_SOURCE "
                "to 'invoice'."
            )
        for alternatives in RECOMMENDED:
            if not enabled & set(alternatives):
                warnings.append(
                    f"{name} does not send {' or '.join(alternatives)}: a refund that fails "
                    "would not give the payment back."
                )
    version = endpoint.get("api_version")
    if version is not None and version not in TESTED_API_VERSIONS:
        tested = ", ".join(TESTED_API_VERSIONS)
        warnings.append(
            f"{name} uses API version {version}, which this extension has not been "
            f"tested with (tested: {tested})."
        )
    return warnings
