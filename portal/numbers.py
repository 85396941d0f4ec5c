"""How every page shows a measured value: at most six significant digits.

Any finite float is a legal reading. Django's floatformat and a plain {{ value }}
print every one of 1.7e308's 309 digits; `format_value` prints 1.7e+308.
"""

SIGNIFICANT_DIGITS = 6


def format_value(value: float | None, digits: int = SIGNIFICANT_DIGITS) -> str:
    """21.5, 0.3 (not 0.30000000000000004), 1.7e+308, -1.23457e-300; "—" for none."""
    if value is None:
        return "—"
    return f"{value:.{digits}g}"
