"""Track Stripe payments for a partner program in a Flask app, the way PartnerStack does.

The names below are imported on first use, not with the package: pytest imports
our plugin (``flask_partnerstack_stripe.pytest_plugin``) in every test run of every
project that has the package installed, and that must not import Flask, stripe and
SQLAlchemy into runs that never use them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import signals
    from .config import ConfigurationError
    from .extension import PartnerStackStripe
    from .models import (
        CommissionMixin,
        CustomerMixin,
        InstallStateMixin,
        Models,
        PayoutMixin,
        RefundMixin,
        SignalDeliveryMixin,
        StripeAccountMixin,
        TransactionMixin,
        WebhookEventMixin,
    )
    from .referral import decode_partner_key

#: Each public name and the module that defines it.
_EXPORTS = {
    "CommissionMixin": ".models",
    "ConfigurationError": ".config",
    "CustomerMixin": ".models",
    "InstallStateMixin": ".models",
    "Models": ".models",
    "PartnerStackStripe": ".extension",
    "PayoutMixin": ".models",
    "RefundMixin": ".models",
    "SignalDeliveryMixin": ".models",
    "StripeAccountMixin": ".models",
    "TransactionMixin": ".models",
    "WebhookEventMixin": ".models",
    "decode_partner_key": ".referral",
    "signals": ".signals",
}

__all__ = [
    "CommissionMixin",
    "ConfigurationError",
    "CustomerMixin",
    "InstallStateMixin",
    "Models",
    "PartnerStackStripe",
    "PayoutMixin",
    "RefundMixin",
    "SignalDeliveryMixin",
    "StripeAccountMixin",
    "TransactionMixin",
    "WebhookEventMixin",
    "decode_partner_key",
    "signals",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name], __name__)
    value = module if name == "signals" else getattr(module, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
