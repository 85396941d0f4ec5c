"""SQL text built from the models' named choices, for statements written by hand."""

from collections.abc import Iterable


def literal_list(values: Iterable[str]) -> str:
    """`'a', 'b'`: the values as SQL string literals, for an `IN (...)` written into a
    statement (choices named in code, never client input)."""
    return ", ".join("'" + str(value).replace("'", "''") + "'" for value in values)
