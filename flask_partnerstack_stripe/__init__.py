"""Track Stripe payments for a partner program in a Flask app, the way PartnerStack does."""

from . import signals
from .config import ConfigurationError
from .extension import PartnerStackStripe
from .models import (
    CustomerMixin,
    Models,
    StripeAccountMixin,
    TransactionMixin,
    WebhookEventMixin,
)
from .referral import decode_partner_key

__all__ = [
    "ConfigurationError",
    "CustomerMixin",
    "Models",
    "PartnerStackStripe",
    "StripeAccountMixin",
    "TransactionMixin",
    "WebhookEventMixin",
    "decode_partner_key",
    "signals",
]
