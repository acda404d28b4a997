"""Reward rules: which commission a payment earns. No Flask and no database here.

``PARTNERSTACK_STRIPE_REWARDS`` is a list of rules, each ``{"percent": 20}`` or
``{"flat": 500, "currency": "usd"}``, optionally narrowed by ``product_key``,
``partner_key`` and ``months``. The most specific rule that matches a payment wins
(partner and product, then product, then partner, then neither); among rules equally
specific, the first in the list that pays in the payment's currency wins, so a
``months`` rule listed before an open-ended one pays its rate during its window and the
other afterwards. No rule, no commission.

Amounts are integers in the currency's minor unit. A percentage is rounded half-even
(``Decimal``, never float). A flat rule pays only payments in its own currency (no
exchange rate is guessed), so rules may differ by currency alone: one flat rule per
currency, or a flat rule for one currency before a percentage for the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from .config import PREFIX, ConfigurationError
from .values import MAX_AMOUNT, METADATA_LENGTH

_KEYS = {"percent", "flat", "currency", "product_key", "partner_key", "months"}


@dataclass(frozen=True)
class Rule:
    """One validated reward rule."""

    percent: Decimal | None = None
    flat: int | None = None
    currency: str | None = None
    product_key: str | None = None
    partner_key: str | None = None
    months: int | None = None

    @property
    def specificity(self) -> int:
        """3 for partner and product, 2 for product, 1 for partner, 0 for neither."""
        return (2 if self.product_key is not None else 0) + (
            1 if self.partner_key is not None else 0
        )

    def matches(self, partner_key: str | None, product_key: str | None, months_in: int) -> bool:
        """Whether the rule applies to a payment ``months_in`` whole months after the
        customer's first payment."""
        return (
            (self.product_key is None or self.product_key == product_key)
            and (self.partner_key is None or self.partner_key == partner_key)
            and (self.months is None or months_in < self.months)
        )

    def pays_in(self, currency: str) -> bool:
        """Whether the rule pays payments in ``currency`` (a flat rule: its own only)."""
        return self.flat is None or self.currency == currency

    def commission(self, amount: int, currency: str) -> int:
        """What the rule pays on ``amount`` (minor units) in ``currency``; 0 for a flat
        rule in another currency."""
        if amount <= 0:
            return 0
        if self.flat is not None:
            return self.flat if self.pays_in(currency) else 0
        assert self.percent is not None
        value = (Decimal(amount) * self.percent / 100).quantize(
            Decimal(1), rounding=ROUND_HALF_EVEN
        )
        return max(int(value), 0)


def parse_rules(value: Any) -> tuple[Rule, ...]:
    """The rules of ``PARTNERSTACK_STRIPE_REWARDS``; a :class:`ConfigurationError` naming
    the wrong rule (its index) and what is wrong with it."""
    name = f"{PREFIX}REWARDS"
    if not isinstance(value, (list, tuple)):
        raise ConfigurationError(f"{name} must be a list of rules, got {type(value).__name__}")
    rules = tuple(_rule(name, index, raw) for index, raw in enumerate(value))
    for index, rule in enumerate(rules):
        covering = (n for n, earlier in enumerate(rules[:index]) if _covers(earlier, rule))
        shadow = next(covering, None)
        if shadow is None:
            continue
        earlier = rules[shadow]
        if earlier.months == rule.months:
            raise ConfigurationError(
                f"{name}[{index}] has the same product_key, partner_key and months as rule "
                f"{shadow}, which pays in {rule.currency or 'every currency'} too: only one "
                "of them could ever apply"
            )
        raise ConfigurationError(
            f"{name}[{index}] could never apply: rule {shadow}, listed before it, has the "
            f"same product_key and partner_key, pays in {rule.currency or 'every currency'} "
            f"too and {_window(earlier.months)}, which covers this rule's "
            f"{_window(rule.months)}; list the rule with the shorter months first"
        )
    return rules


def _covers(earlier: Rule, later: Rule) -> bool:
    """Whether ``earlier`` wins every payment ``later`` matches: equally specific rules go
    to the first listed that pays in the payment's currency (:func:`choose_rule`), so a
    later one whose scope, currency and months window an earlier one covers never applies."""
    same_scope = (earlier.product_key, earlier.partner_key) == (
        later.product_key, later.partner_key
    )  # fmt: skip
    longer = earlier.months is None or (later.months is not None and earlier.months >= later.months)
    return same_scope and (earlier.currency in (None, later.currency)) and longer


def _window(months: int | None) -> str:
    return "no months limit" if months is None else f"months {months}"


def _rule(name: str, index: int, raw: Any) -> Rule:
    where = f"{name}[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"{where} must be a dict, got {type(raw).__name__}")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ConfigurationError(
            f"{where} has unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
            f"allowed: {', '.join(sorted(_KEYS))}"
        )
    if ("percent" in raw) == ("flat" in raw):
        raise ConfigurationError(f"{where} must have exactly one of 'percent' or 'flat'")
    percent = flat = currency = None
    if "percent" in raw:
        percent = _percent(where, raw["percent"])
        if "currency" in raw:
            raise ConfigurationError(f"{where}: 'currency' goes with 'flat', not 'percent'")
    else:
        flat = raw["flat"]
        if isinstance(flat, bool) or not isinstance(flat, int) or not 0 < flat <= MAX_AMOUNT:
            raise ConfigurationError(
                f"{where}: 'flat' must be a positive integer in minor units (500 for 5.00) "
                f"up to 2**63-1, got {flat!r}"
            )
        currency = raw.get("currency")
        if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
            raise ConfigurationError(
                f"{where}: a flat rule needs 'currency', a three-letter code such as 'usd', "
                f"got {currency!r}"
            )
        currency = currency.lower()
    keys = {}
    for key in ("product_key", "partner_key"):
        value = raw.get(key)
        if value is not None and (
            not isinstance(value, str) or not value.strip() or len(value) > METADATA_LENGTH
        ):
            # Longer than Stripe's metadata values could never match a payment.
            raise ConfigurationError(
                f"{where}: {key!r} must be a non-empty string of at most {METADATA_LENGTH}"
                f" characters, got {value!r:.80}"
            )
        # Trimmed, as a payment's keys are where they come in: " team " is "team".
        keys[key] = value.strip() if value is not None else None
    months = raw.get("months")
    if months is not None and (isinstance(months, bool) or not isinstance(months, int)
                               or months <= 0):  # fmt: skip
        raise ConfigurationError(f"{where}: 'months' must be a positive integer, got {months!r}")
    return Rule(percent=percent, flat=flat, currency=currency, months=months, **keys)


def _percent(where: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal, float)):
        raise ConfigurationError(f"{where}: 'percent' must be a number, got {value!r}")
    try:
        # A float is read through its shortest repr (12.5 -> "12.5"), never its binary value.
        percent = Decimal(repr(value) if isinstance(value, float) else value)
    except InvalidOperation:
        raise ConfigurationError(f"{where}: 'percent' must be a number, got {value!r}") from None
    if not percent.is_finite() or percent <= 0 or percent > 100:
        raise ConfigurationError(
            f"{where}: 'percent' must be above 0 and at most 100, got {value!r}"
        )
    return percent


def choose_rule(
    rules: Sequence[Rule],
    partner_key: str | None,
    product_key: str | None,
    months_in: int,
    currency: str,
) -> Rule | None:
    """The most specific rule that matches; among equally specific ones the first listed
    that pays in ``currency`` (else the first listed, a flat rule that pays nothing)."""
    best: Rule | None = None
    for rule in rules:
        if not rule.matches(partner_key, product_key, months_in):
            continue
        if (
            best is None
            or rule.specificity > best.specificity
            or (
                rule.specificity == best.specificity
                and rule.pays_in(currency)
                and not best.pays_in(currency)
            )
        ):
            best = rule
    return best


def months_between(first: datetime, then: datetime) -> int:
    """Whole calendar months from ``first`` to ``then`` (0 within the first month)."""
    months = (then.year - first.year) * 12 + (then.month - first.month)
    if (then.day, then.time()) < (first.day, first.time()):
        months -= 1
    return max(months, 0)


def commission_for(
    rules: Sequence[Rule],
    *,
    amount: int,
    currency: str,
    partner_key: str | None,
    product_key: str | None,
    months_in: int,
) -> int:
    """The commission a standing payment earns under ``rules`` (0 when none applies)."""
    rule = choose_rule(rules, partner_key, product_key, months_in, currency)
    return rule.commission(amount, currency) if rule is not None else 0
