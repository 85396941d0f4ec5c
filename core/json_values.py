"""The limits of a JSON value a user or device hands us (command args and results).

One rule for the API's schemas and the portal's and admin's forms: at most
MAX_JSON_BYTES when serialised, at most MAX_JSON_DEPTH levels of nesting (a
deeply nested value costs recursion everywhere it goes: parsers, jsonb, pages),
no NUL character (PostgreSQL stores none) and no NaN or Infinity (not JSON).
"""

import json
from typing import Any

MAX_JSON_BYTES = 16 * 1024
MAX_JSON_DEPTH = 32


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def check_json_value(value: Any) -> Any:
    """`value` if it keeps the limits, else ValueError saying which it breaks."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"must be nested at most {MAX_JSON_DEPTH} levels deep")
        if isinstance(item, str) and "\x00" in item:
            raise ValueError("text must not contain NUL (\\u0000) characters")
        if isinstance(item, dict):
            pending.extend((key, depth) for key in item)
            pending.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            pending.extend((child, depth + 1) for child in item)
    try:
        size = len(json.dumps(value, allow_nan=False).encode())
    except ValueError:
        raise ValueError("NaN and Infinity are not JSON numbers") from None
    if size > MAX_JSON_BYTES:
        raise ValueError(f"must be at most {MAX_JSON_BYTES} bytes as JSON (it is {size})")
    return value


def parse_json_text(text: str) -> Any:
    """Parse text a person typed into a form, with the same limits."""
    if len(text.encode()) > MAX_JSON_BYTES:
        raise ValueError(f"must be at most {MAX_JSON_BYTES} bytes")
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise ValueError(f"must be nested at most {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as exc:  # JSONDecodeError, or NaN/Infinity refused above
        raise ValueError(f"not valid JSON: {exc}") from None
    return check_json_value(value)
