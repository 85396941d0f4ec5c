"""Shards added to the local cluster after `up`, by `python -m cluster add-shard`.

shard_1 and shard_2 come from core.local_cluster. Each extra shard gets a PostgreSQL
instance of its own (var/pg/<alias>) on the first free port from
FLEET_EXTRA_SHARD_PORT_BASE (default 55435), and is recorded in var/extra_shards.json
(alias -> port and database) so `up` restarts it, `down` stops it and `status` shows
it. Choosing an alias and a port is pure (`plan`), so it is tested without a cluster.
"""

import contextlib
import fcntl
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cluster import state
from cluster.util import ClusterError

STATE_FILE = "extra_shards.json"
LOCK_FILE = ".extra_shards.lock"
PORT_BASE_ENV = "FLEET_EXTRA_SHARD_PORT_BASE"
DEFAULT_PORT_BASE = 55435
MAX_PORT = 65535
# The same rule as core.models.Shard.alias (this tool does not import Django).
ALIAS_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,62}")
NUMBERED_ALIAS = re.compile(r"shard_(\d+)")
# The directory's shard registry, read with psql: tab-separated, one shard a line.
REGISTRY_SQL = "COPY (SELECT alias, host, port, db_name FROM core_shard ORDER BY alias) TO STDOUT"


@dataclass(frozen=True)
class ExtraShard:
    """An extra shard's instance: its alias (also the instance's name), port and database."""

    alias: str
    port: int
    db: str


def state_path(var: Path) -> Path:
    return var / STATE_FILE


def port_base() -> int:
    """Where port search starts; another cluster (the e2e one) sets its own base."""
    raw = os.environ.get(PORT_BASE_ENV, str(DEFAULT_PORT_BASE))
    try:
        base = int(raw)
    except ValueError:
        raise ClusterError(f"{PORT_BASE_ENV}={raw!r} is not a port number") from None
    if not 1 <= base <= MAX_PORT:
        raise ClusterError(f"{PORT_BASE_ENV}={base} is not a port number")
    return base


def database_name(alias: str) -> str:
    """Named like the configured shards' databases (fleet_shard_1)."""
    return f"fleet_{alias}"


def load(path: Path) -> dict[str, ExtraShard]:
    """The recorded extra shards; entries that do not make sense are skipped."""
    shards = {}
    for alias, entry in state.load(path).items():
        try:
            shard = ExtraShard(alias, int(entry["port"]), str(entry["db"]))
        except (TypeError, KeyError, ValueError):
            continue
        if ALIAS_PATTERN.fullmatch(alias):
            shards[alias] = shard
    return shards


def save(path: Path, shards: Mapping[str, ExtraShard]) -> None:
    state.save(path, {alias: {"port": s.port, "db": s.db} for alias, s in sorted(shards.items())})


@contextlib.contextmanager
def locked(var: Path) -> Iterator[None]:
    """One add-shard at a time per var dir, so two runs never pick the same alias or port."""
    var.mkdir(parents=True, exist_ok=True)
    with open(var / LOCK_FILE, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- choosing (pure) ------------------------------------------------------------


def next_alias(taken: Iterable[str]) -> str:
    """shard_N after the highest N taken: aliases are never reused, so gaps stay gaps."""
    numbers = [int(m.group(1)) for m in map(NUMBERED_ALIAS.fullmatch, taken) if m]
    return f"shard_{max(numbers, default=0) + 1}"


def next_port(base: int, taken: Collection[int], in_use: Callable[[int], bool]) -> int:
    """The first port from `base` that no component claims and nothing listens on."""
    for port in range(base, MAX_PORT + 1):
        if port not in taken and not in_use(port):
            return port
    raise ClusterError(f"no free port from {base} to {MAX_PORT} for a new shard")


def plan(
    alias: str | None,
    *,
    recorded: Mapping[str, ExtraShard],
    configured: Collection[str],
    registered: Mapping[str, str],
    reserved_ports: Collection[int],
    base: int,
    in_use: Callable[[int], bool],
) -> tuple[ExtraShard, bool]:
    """The extra shard to (re)start and whether it is new.

    `configured` are the aliases `up` starts itself, `registered` the directory's
    registry (alias -> where), `reserved_ports` every port the cluster's other
    components use, stopped or not.
    """
    if alias is None:
        alias = next_alias([*configured, *recorded, *registered])
    if not ALIAS_PATTERN.fullmatch(alias):
        raise ClusterError(
            f"{alias!r} is not a shard alias: lower-case letters, digits and _, "
            "starting with a letter"
        )
    if alias in configured:
        raise ClusterError(f"{alias} is one of the instances `python -m cluster up` runs itself")
    if alias in recorded:
        return recorded[alias], False
    if alias in registered:
        raise ClusterError(
            f"{alias} is already registered at {registered[alias]}, not by this tool; "
            "choose another alias"
        )
    taken = {*reserved_ports, *(shard.port for shard in recorded.values())}
    port = next_port(base, taken, in_use)
    return ExtraShard(alias, port, database_name(alias)), True


# -- the running cluster --------------------------------------------------------


class RunsSql(Protocol):
    """A database server psql can talk to (PostgresInstance, or replicas behind a proxy)."""

    def psql(self, sql: str, dbname: str = ...) -> str: ...


def registered_shards(directory: RunsSql, dbname: str) -> dict[str, str]:
    """alias -> host:port/db of every shard in the directory's registry, retired ones too."""
    try:
        output = directory.psql(REGISTRY_SQL + "\n", dbname=dbname)
    except ClusterError as exc:
        raise ClusterError(
            f"cannot read the shard registry (has `python -m cluster up` run?): {exc}"
        ) from exc
    shards = {}
    for line in output.splitlines():
        fields = line.split("\t")
        if len(fields) == 4:
            alias, host, port, db = fields
            shards[alias] = f"{host}:{port}/{db}"
    return shards
