"""Sums, means and deviations of float8 readings that cannot overflow, whatever finite
values arrive.

Any finite float is a legal reading, and two of 1.7e308 already sum past the
largest float8: PostgreSQL's float8 sum(), avg() and stddev() then fail the whole
statement (the squares in a variance overflow from about 1e154 on). numeric has no
range to leave, so big values are summed as numeric, and a bucket's mean is taken
from its numeric sum and kept between its min and max, which are readings and so
finite.

Converting every reading to numeric costs more than summing it (about three times
a float8 sum, five times a float8 variance), so only readings of magnitude
FLOAT_SAFE_BOUND or more take the numeric path: float8 sums and squares of the
others stay far from the float8 range for any count of readings PostgreSQL can
hold. The two parts are added (sums) or combined exactly (deviations).
"""

from dataclasses import dataclass
from decimal import Decimal

# |reading| below this: float8 arithmetic on it cannot overflow (1e100 squared is
# 1e200; even 1e100 of those sum to 1e300, below the float8 maximum of ~1.8e308).
FLOAT_SAFE_BOUND = 1e100


def ordinary(column: str) -> str:
    """SQL: true where float8 arithmetic on the value is safe (false for NaN too)."""
    return f"abs({column}) < {FLOAT_SAFE_BOUND!r}::float8"


def safe_sum(column: str) -> str:
    """SQL for the numeric sum of a float8 column: float8 for ordinary values, numeric
    for huge ones. (A float8 cast to numeric keeps 15 significant digits.)"""
    return (
        f"(coalesce(sum({column}) FILTER (WHERE {ordinary(column)}), 0)::numeric"
        f" + coalesce(sum({column}::numeric) FILTER (WHERE NOT {ordinary(column)}), 0))"
    )


def safe_moments(column: str) -> str:
    """SQL for six columns: count, mean and sample variance of the ordinary values
    (float8), then of the huge ones (numeric); `combine` makes one of them."""
    small, huge = ordinary(column), f"NOT {ordinary(column)}"
    return (
        f"count({column}) FILTER (WHERE {small}), avg({column}) FILTER (WHERE {small}),"
        f" var_samp({column}) FILTER (WHERE {small}),"
        f" count({column}) FILTER (WHERE {huge}), avg({column}::numeric) FILTER (WHERE {huge}),"
        f" var_samp({column}::numeric) FILTER (WHERE {huge})"
    )


@dataclass(frozen=True)
class Moments:
    """Count, mean and sample standard deviation, exact as Decimals (the deviation of
    readings of both signs near the float8 maximum is itself past it)."""

    count: int
    mean: Decimal | None
    stddev: Decimal | None


def combine(*parts: tuple[int, object, object]) -> Moments:
    """One set of moments from parts' (count, mean, sample variance), as safe_moments
    returns them: the pairwise update of Chan, Golub and LeVeque, in Decimal."""
    count, mean, spread = 0, Decimal(0), Decimal(0)  # spread: sum of squared deviations
    for part_count, part_mean, part_variance in parts:
        if not part_count:
            continue
        total = count + part_count
        delta = Decimal(part_mean) - mean
        mean += delta * part_count / total
        spread += Decimal(part_variance or 0) * (part_count - 1)
        spread += delta * delta * count * part_count / total
        count = total
    if not count:
        return Moments(0, None, None)
    return Moments(count, mean, (spread / (count - 1)).sqrt() if count > 1 else None)


def bucket_mean(total: Decimal | float, count: int, low: float, high: float) -> float:
    """A bucket's mean from its exact sum: always finite, never outside [low, high].

    The clamp only matters at the edge of the float range, where the sum's
    15-digit rounding can put the quotient a hair past the largest float.
    """
    return min(max(float(Decimal(total) / count), low), high)
