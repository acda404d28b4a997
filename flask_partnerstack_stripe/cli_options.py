"""Options several ``flask partnerstack`` commands share."""

from __future__ import annotations

import math

import click

from .values import is_http_url


def public_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A ``--base-url`` option's value: an absolute http(s) URL (printed URLs build on it)."""
    if value is not None and not is_http_url(value):
        raise click.BadParameter(f"must be an http:// or https:// URL, got {value!r}.")
    return value


def not_nan(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A number option's value, refused when ``nan`` (click's ranges let it through)."""
    if value is not None and math.isnan(value):
        raise click.BadParameter("must be a number, got nan.")
    return value
