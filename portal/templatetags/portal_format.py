"""Small formatting filters for the portal's templates (the central admin loads them too)."""

import json
from typing import Any

from django import template

from portal.numbers import format_value

register = template.Library()


@register.filter
def as_json(value: Any) -> str:
    """Command arguments as the JSON the user typed, not as a Python repr."""
    if value in (None, {}, []):
        return ""
    return json.dumps(value, sort_keys=True)


@register.filter
def number(value: float | None) -> str:
    """A measured value, short whatever its magnitude (portal.numbers.format_value)."""
    return format_value(value)
