"""Record which database every query goes to, by wrapping each connection.

This checks routing from the outside, at the cursor, instead of trusting the
router's own answer.
"""

from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from django.db import connections


class QueryLog(dict[str, list[str]]):
    def count(self, alias: str) -> int:  # type: ignore[override]
        return len(self.get(alias, []))

    def aliases(self) -> set[str]:
        return {alias for alias, sqls in self.items() if sqls}


@contextmanager
def queries_by_alias() -> Iterator[QueryLog]:
    """Yield a QueryLog filled with the SQL each known alias executes in this thread."""
    log = QueryLog(defaultdict(list))

    def recorder(alias: str):
        def wrapper(execute, sql, params, many, context):
            log.setdefault(alias, []).append(sql)
            return execute(sql, params, many, context)

        return wrapper

    with ExitStack() as stack:
        for alias in list(connections.settings):
            stack.enter_context(connections[alias].execute_wrapper(recorder(alias)))
        yield log
