"""The read side of the fence for querysets: `for_device()` reads only where the device is served.

A device's rows linger on its old shard after a move until cleanup, and a process may
still hold the old placement in its cache. So a `for_device()` queryset also asks the
fence, inside the very statement that reads the rows, whether this shard serves the
device (shards.fence.SERVED_SQL). Rows that come back prove it. An empty answer is
ambiguous (no rows, or not served here), so one statement more asks the fence and,
in the same snapshot, whether matching rows exist; counts and EXISTS read the fence
and the answer in a single statement. A device served elsewhere is looked up again
and read there; one held by a move's fence is waited for, as writers wait
(shards.fence.follow_device). Writes stay with shards.fence.write_for_device.
"""

from collections.abc import Callable, Iterator
from typing import Any, Self, TypeVar

from django.core.exceptions import EmptyResultSet
from django.db import models

from routers.managers import ShardQuerySet
from routers.placement import device_id_of

T = TypeVar("T")
_END = object()
_NO_ROWS_SQL = "SELECT 1 WHERE false"


class FencedQuerySet(ShardQuerySet):
    """Shard querysets whose `for_device()` reads are fenced (see the module docstring)."""

    _fenced_device: int | None = None

    def for_device(self, device: object) -> Self:
        from shards.fence import SERVED_SQL

        device_id = device_id_of(device)
        queryset = super().for_device(device_id)
        # A plain WHERE fragment, added in place: cheaper than an expression or a clone.
        queryset.query.add_extra(None, None, [SERVED_SQL], [device_id], None, None)
        queryset._fenced_device = device_id
        return queryset

    def _clone(self) -> Self:
        clone = super()._clone()
        clone._fenced_device = self._fenced_device
        return clone

    def _on(self, alias: str) -> "FencedQuerySet":
        """This query on `alias`, evaluated plainly (the caller does the fencing): itself
        on its own alias (evaluating its iterable does not come back here), else a clone."""
        if alias == self.db:
            return self
        queryset = self._chain()
        queryset._db = alias
        queryset._fenced_device = None
        return queryset

    def _fenced(self, attempt: Callable[["FencedQuerySet", str], T]) -> T:
        from shards.fence import follow_device

        # The first try on the alias the query was made for: no second placement lookup.
        return follow_device(
            self._fenced_device,
            lambda alias: attempt(self._on(alias), alias),
            first_alias=self.db,
        )

    def _state_with(self, queryset: "FencedQuerySet", alias: str, inner: str) -> tuple:
        """(fence state, answer of `inner` over this query's rows), one statement."""
        from shards.fence import fence_state_with

        try:
            sql, params = queryset.query.get_compiler(alias).as_sql()
        except EmptyResultSet:  # no row can match (e.g. an id beyond bigint): still ask the fence
            sql, params = _NO_ROWS_SQL, ()
        inner_sql = inner.replace("{query}", sql)
        return fence_state_with(alias, self._fenced_device, inner_sql, list(params))

    def _served_or_moved(self, alias: str, state: str | None) -> None:
        from shards.fence import DeviceMoved, served

        if not served(state):
            raise DeviceMoved(self._fenced_device, alias, state)

    # -- evaluation ------------------------------------------------------------------------

    def _fetch_all(self) -> None:
        if self._result_cache is None and self._fenced_device is not None:

            def attempt(queryset: FencedQuerySet, alias: str) -> list:
                while True:
                    rows = list(queryset._iterable_class(queryset))
                    if rows:  # the statement's own fence check passed
                        return rows
                    state, exists = self._state_with(queryset, alias, "SELECT EXISTS({query})")
                    self._served_or_moved(alias, state)
                    if not exists:
                        return rows  # served here, and there are none
                    # Rows appeared since the first read (a move rolled back): read again.

            self._result_cache = self._fenced(attempt)
        super()._fetch_all()

    def count(self) -> int:
        if self._result_cache is not None or self._fenced_device is None:
            return super().count()

        def attempt(queryset: FencedQuerySet, alias: str) -> int:
            state, number = self._state_with(
                queryset, alias, "SELECT count(*) FROM ({query}) counted"
            )
            self._served_or_moved(alias, state)
            return number

        return self._fenced(attempt)

    def exists(self) -> bool:
        if self._result_cache is not None or self._fenced_device is None:
            return super().exists()

        def attempt(queryset: FencedQuerySet, alias: str) -> bool:
            state, found = self._state_with(queryset, alias, "SELECT EXISTS({query})")
            self._served_or_moved(alias, state)
            return found

        return self._fenced(attempt)

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self._fenced_device is None:
            return super().aggregate(*args, **kwargs)
        from shards.fence import read_for_device

        return read_for_device(
            self._fenced_device,
            lambda alias: super(FencedQuerySet, self._on(alias)).aggregate(*args, **kwargs),
        )

    def iterator(self, chunk_size: int | None = None) -> Iterator[Any]:
        if self._fenced_device is None:
            yield from super().iterator(chunk_size=chunk_size)
            return

        def first_rows(queryset: FencedQuerySet, alias: str) -> tuple[Any, Iterator[Any]]:
            while True:
                rows = super().iterator(chunk_size=chunk_size)
                first = next(rows, _END)
                if first is not _END:
                    return first, rows
                state, exists = self._state_with(queryset, alias, "SELECT EXISTS({query})")
                self._served_or_moved(alias, state)
                if not exists:
                    return _END, iter(())

        first, rest = self._fenced(first_rows)
        if first is not _END:
            yield first
            yield from rest


FencedManager = models.Manager.from_queryset(FencedQuerySet)
