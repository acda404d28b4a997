"""PartnerStack's tracking rules: plain functions of an event and a session."""

from __future__ import annotations

from .receiver import BuiltinHandler

BUILTIN_HANDLERS: dict[str, BuiltinHandler] = {}
