"""Small formatting filters for the portal's templates."""

import json
from typing import Any

from django import template

register = template.Library()


@register.filter
def as_json(value: Any) -> str:
    """Command arguments as the JSON the user typed, not as a Python repr."""
    if value in (None, {}, []):
        return ""
    return json.dumps(value, sort_keys=True)
