"""``flask partnerstack ...`` commands."""

from __future__ import annotations

from flask.cli import AppGroup

partnerstack_cli = AppGroup("partnerstack", help="Stripe payment tracking for partners.")
