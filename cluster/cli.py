"""`python -m cluster up|down|status|reload|simulate|add-shard`: the local cluster's CLI.

Everything is derived from core.local_cluster (ports, names, VAR_DIR), the same module
Django's settings read, so the tool and the app cannot disagree about where things are.
"""

import argparse
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg2

from cluster import celery_procs, extra_shards, replicated, state
from cluster.appnodes import AppNode, app_nodes
from cluster.django_steps import add_extra_shard, run_django_steps
from cluster.etcd import Etcd
from cluster.haproxy import HAProxy
from cluster.pgbouncer import Pooler
from cluster.ports import bindable, port_in_use
from cluster.postgres import PostgresInstance
from cluster.redis import RedisInstance
from cluster.replicated import ReplicatedDatabase
from cluster.simulate import simulate
from cluster.util import ClusterError
from core import local_cluster as lc
from core.pooler import NoPooler

EXIT_NOT_ALL_UP = 3
STATS_USER = "fleet"
# The key of clusters seeded before `up` generated one (their tokens are digested with it).
LEGACY_SECRET_KEY = "local-cluster-only-not-a-secret"
# HAProxy needs `rise` passing checks (2 x 500 ms) to put a fresh node in rotation.
ALL_UP_TIMEOUT = 30.0
SIMULATED_BATCHES = 3


def var_dir() -> Path:
    return lc.VAR_DIR.absolute()


def state_file() -> Path:
    return var_dir() / "cluster.json"


def shown(path: Path) -> str:
    """`path` relative to the working directory when below it, for short messages."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


DatabaseServer = PostgresInstance | ReplicatedDatabase


def database_server(name: str, port: int, port_env: str | None = None) -> DatabaseServer:
    """What serves a database on `port`: one PostgreSQL, or Patroni replicas behind a proxy
    (FLEET_REPLICAS >= 2). Either way every client reaches it at `port` (via its pooler)."""
    if lc.REPLICAS > 1:
        return ReplicatedDatabase(name, port, var_dir(), lc.REPLICAS, lc.ETCD_PORT, port_env)
    return PostgresInstance(name, port, var_dir() / "pg", var_dir() / "log", port_env=port_env)


def postgres_instances() -> list[tuple[DatabaseServer, str]]:
    """(server, database name) for the directory, every configured shard and extra shard."""
    instances = [
        (
            database_server("directory", lc.DIRECTORY_PORT, "FLEET_DIRECTORY_PORT"),
            lc.DIRECTORY_DB,
        )
    ]
    for alias, (port, dbname) in lc.SHARDS.items():
        instances.append((database_server(alias, port, f"FLEET_{alias.upper()}_PORT"), dbname))
    known = {instance.name for instance, _ in instances}
    for shard in recorded_extra_shards().values():
        if shard.alias not in known:
            instances.append((database_server(shard.alias, shard.port), shard.db))
    return instances


def etcd_instance() -> Etcd:
    """The etcd the replicated shape's Patroni members elect their primaries through."""
    return Etcd(var_dir(), lc.ETCD_PORT)


def pooler_for(instance: DatabaseServer) -> Pooler:
    """The PgBouncer in front of `instance`, through which every process reaches it."""
    return Pooler(instance.name, instance.port, var_dir())


def recorded_extra_shards() -> dict[str, extra_shards.ExtraShard]:
    """Shards `add-shard` added to this var dir (var/extra_shards.json)."""
    return extra_shards.load(extra_shards.state_path(var_dir()))


def shard_endpoints() -> dict[str, dict[str, Any]]:
    """Every shard instance of this cluster, configured and extra, for var/cluster.json."""
    shards = {alias: _endpoint(port, dbname) for alias, (port, dbname) in lc.SHARDS.items()}
    for alias, shard in recorded_extra_shards().items():
        shards.setdefault(alias, _endpoint(shard.port, shard.db))
    return shards


def redis_instance() -> RedisInstance:
    var = var_dir()
    return RedisInstance(
        lc.REDIS_PORT,
        data_dir=var / "redis",
        conf_file=var / "redis" / "redis.conf",
        pid_file=var / "run" / "redis.pid",
        log_file=var / "log" / "redis.log",
    )


def configured_app_nodes() -> list[AppNode]:
    return app_nodes(var_dir(), lc.APP_PORTS)


def stale_app_nodes() -> list[AppNode]:
    """Nodes with an ini in var/run that are no longer configured (FLEET_APP_PORTS shrank)."""
    configured = {node.name for node in configured_app_nodes()}
    stale = []
    for ini in sorted((var_dir() / "run").glob("app-*.ini")):
        match = re.fullmatch(r"app-(\d+)\.ini", ini.name)
        if match and ini.stem not in configured:
            stale.append(AppNode(int(match.group(1)), 0, var_dir()))
    return stale


def haproxy_instance(data: dict[str, Any]) -> HAProxy:
    """Our HAProxy; the stats login comes from var/cluster.json (made once by `up`)."""
    return HAProxy(
        var=var_dir(),
        nodes=configured_app_nodes(),
        http_port=lc.HTTP_PORT,
        stats_port=lc.STATS_PORT,
        stats_user=data.get("stats_user") or STATS_USER,
        stats_password=data.get("stats_password") or "",
    )


def _endpoint(port: int, dbname: str) -> dict[str, Any]:
    """`port` is the PostgreSQL server's own; processes use `pooler_port`."""
    return {"host": lc.HOST, "port": port, "pooler_port": lc.pooler_port(port), "db": dbname}


def _site_urls(haproxy: HAProxy) -> dict[str, Any]:
    return {
        "url": haproxy.url,
        "admin_url": f"{haproxy.url}admin/",
        "api_docs_url": f"{haproxy.url}api/v1/docs",
        "stats_url": haproxy.stats_url,
        "app_nodes": [node.url for node in configured_app_nodes()],
    }


# -- up -------------------------------------------------------------------------


def up() -> int:
    """Start everything that is not running, create databases, run the Django steps."""
    var_dir().mkdir(parents=True, exist_ok=True)
    data = state.load(state_file())
    _check_shape(data)
    if lc.REPLICAS > 1:
        etcd = etcd_instance()
        started = etcd.ensure_running()
        print(f"etcd:\n  {'etcd':<10} {etcd.url}  {'started' if started else 'already running'}")
    print("postgres:" if lc.REPLICAS == 1 else f"postgres ({lc.REPLICAS} replicas each, Patroni):")
    for instance, dbname in postgres_instances():
        started = instance.ensure_running()
        created = instance.create_database(dbname)
        pooler = pooler_for(instance)
        pooled = pooler.ensure_running()
        print(
            f"  {instance.name:<10} {lc.HOST}:{instance.port}  "
            f"{'started' if started else 'already running'}, database {dbname}"
            f"{' created' if created else ''}; pgbouncer {lc.HOST}:{pooler.port} "
            f"{'started' if pooled else 'already running'} (pool size {pooler.pool_size})",
            flush=True,
        )
    print("redis:")
    redis = redis_instance()
    started = redis.ensure_running()
    print(f"  {'redis':<10} {lc.HOST}:{redis.port}  {'started' if started else 'already running'}")

    data["replicas"] = lc.REPLICAS
    data["directory"] = _endpoint(lc.DIRECTORY_PORT, lc.DIRECTORY_DB)
    data["shards"] = shard_endpoints()
    data["redis"] = redis.url()
    data.setdefault("admin_user", None)
    if not data.get("secret_key"):
        # Token digests are keyed with it: a cluster seeded before keys were generated
        # keeps the fixed key it was seeded with, so its demo tokens keep working.
        seeded_before = data.get("admin_user") is not None
        data["secret_key"] = LEGACY_SECRET_KEY if seeded_before else secrets.token_urlsafe(50)
    for key in ("admin_password", "web_password"):
        if not data.get(key):
            data[key] = secrets.token_urlsafe(12)
    if not data.get("provisioning_key"):
        data["provisioning_key"] = "fleet_" + secrets.token_urlsafe(32)
    data.setdefault("stats_user", STATS_USER)
    if not data.get("stats_password"):
        data["stats_password"] = secrets.token_urlsafe(16)
    data.setdefault("demo_devices", [])
    # Saved before the Django steps, so a failed seed_demo cannot lose the password.
    state.save(state_file(), data)

    print("django:", flush=True)
    seed = run_django_steps(
        data["admin_password"],
        data["web_password"],
        data["provisioning_key"],
        var_dir() / "log" / "manage.log",
    )
    if seed is not None:
        data["admin_user"] = seed.get("admin_user", data["admin_user"])
        data["web_user"] = seed.get("web_user")
        data["demo_devices"] = state.merge_devices(
            data.get("demo_devices") or [], seed.get("devices") or []
        )
        state.save(state_file(), data)

    _app_tier_up(data)
    state.save(state_file(), data)
    if seed is not None and not data.get("simulation"):
        _simulate_once(data)
    _print_summary(data)
    return 0


def _check_shape(data: dict[str, Any]) -> None:
    """A var dir holds one shape: its databases are not carried from one to the other."""
    if lc.REPLICAS < 1:
        raise ClusterError(f"FLEET_REPLICAS={lc.REPLICAS}: a database needs at least one server")
    made_with = data.get("replicas", 1) if data.get("directory") else lc.REPLICAS
    if made_with != lc.REPLICAS:
        raise ClusterError(
            f"{shown(var_dir())} holds a cluster made with FLEET_REPLICAS={made_with}, not"
            f" {lc.REPLICAS}; its databases are not converted. Run it with FLEET_REPLICAS="
            f"{made_with}, or run `python -m cluster down` and start the other shape in"
            " another FLEET_VAR_DIR (or after removing this one)"
        )


def _app_tier_up(data: dict[str, Any]) -> None:
    """uWSGI nodes, HAProxy, Celery worker and beat; then wait until all are in rotation."""
    print("app tier:", flush=True)
    for node in stale_app_nodes():
        if node.stop():
            print(f"  {node.name:<13} stopped (no longer in FLEET_APP_PORTS)")
    nodes = configured_app_nodes()
    actions = {node.name: node.ensure_running() for node in nodes}
    for node in nodes:
        node.wait_ready()
        print(f"  {node.name:<13} {node.url:<24} {actions[node.name]}", flush=True)
    haproxy = haproxy_instance(data)
    action = haproxy.ensure_running()
    print(f"  {'haproxy':<13} {haproxy.url:<24} {action}; stats {haproxy.stats_url}", flush=True)
    for proc in (celery_procs.worker(var_dir()), celery_procs.beat(var_dir())):
        action = proc.ensure_running()
        proc.wait_ready()
        print(f"  {proc.name:<13} {'-':<24} {action} (pid {proc.pid()})", flush=True)
    states = haproxy.wait_all_up(ALL_UP_TIMEOUT)
    print("  haproxy sees  " + ", ".join(f"{name} {st}" for name, st in sorted(states.items())))
    data.update(_site_urls(haproxy))


def _simulate_once(data: dict[str, Any]) -> None:
    """The first `up` uploads a few batches per demo device, so there is data to look at."""
    print("simulation:", flush=True)
    result = simulate(data["url"], data.get("demo_devices") or [], batches=SIMULATED_BATCHES)
    print(
        f"  {result.batches_accepted}/{result.batches_sent} batches accepted "
        f"({result.readings_accepted} readings) from {result.devices} demo devices with a token"
    )
    if result.batches_sent and result.batches_accepted == result.batches_sent:
        data["simulation"] = {
            "batches": result.batches_accepted,
            "readings": result.readings_accepted,
        }
        state.save(state_file(), data)


def _print_summary(data: dict[str, Any]) -> None:
    logs = var_dir() / "log"
    real_logs = Path(os.path.realpath(logs))
    print()
    print("Local cluster is up:")
    directory = data["directory"]
    for name, where in [("directory", directory), *data["shards"].items()]:
        server = f"postgres :{where['port']}"
        if lc.REPLICAS > 1:
            nodes = ", ".join(f":{lc.node_port(where['port'], n)}" for n in range(lc.REPLICAS))
            server = f"primary via :{where['port']}; replicas {nodes}"
        print(
            f"  {name:<10} pgbouncer {where['host']}:{lc.pooler_port(where['port'])}/{where['db']}"
            f" ({server})"
        )
    print(f"  redis      {data['redis']}")
    print(f"  DB login   {lc.DB_USER} / {lc.DB_PASSWORD}")
    for node_url in data.get("app_nodes") or []:
        print(f"  app node   {node_url}")
    print(f"  site       {data['url']}")
    print(f"  admin      {data['admin_url']}")
    print(f"  API docs   {data['api_docs_url']}")
    print(f"  HAProxy    {data['stats_url']}  ({data['stats_user']} / {data['stats_password']})")
    where = shown(logs) + (f" (-> {real_logs})" if real_logs != logs else "")
    print(f"  logs       {where}")
    print(f"  state      {shown(state_file())}")
    if data.get("admin_user"):
        print(f"  admin      {data['admin_user']} / {data['admin_password']}")
        print(f"  web user   {data.get('web_user')} / {data['web_password']}")
        print(f"  fleet key  {data['provisioning_key']}")
        print(f"  devices    {len(data.get('demo_devices') or [])} demo devices (tokens in state)")
    else:
        print("  admin      not seeded yet (manage.py seed_demo has not run)")
    print("Run a management command: .venv/bin/python manage.py cluster_status")
    print("Reload the app nodes:     .venv/bin/python -m cluster reload")
    print("Stop everything:          .venv/bin/python -m cluster down")


# -- down -----------------------------------------------------------------------


def _all_postgres_instances() -> list[DatabaseServer]:
    """Configured servers, then any other data dir `up` left in var/pg (e.g. a renamed
    shard, or a replica of the other shape), stopped after their Patroni leftovers."""
    instances = [instance for instance, _ in postgres_instances()]
    known = {instance.name for instance in instances}
    root = var_dir() / "pg"
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if entry.name not in known and (entry / "PG_VERSION").exists():
                instances.append(PostgresInstance(entry.name, 0, root, var_dir() / "log"))
    return instances


def down() -> int:
    """Stop only what `up` started from this var/, front to back; idempotent."""
    stopped = 0
    haproxy = haproxy_instance(state.load(state_file()))
    pid = haproxy.pid()
    if haproxy.stop():
        print(f"stopped haproxy (pid {pid})")
        stopped += 1
    for node in [*configured_app_nodes(), *stale_app_nodes()]:
        pid = node.pid()
        if node.stop():
            print(f"stopped {node.name} (uwsgi master pid {pid or 'gone'})")
            stopped += 1
    for proc in (celery_procs.beat(var_dir()), celery_procs.worker(var_dir())):
        pid = proc.pid()
        if proc.stop():
            print(f"stopped {proc.name} (pid {pid or 'gone'})")
            stopped += 1
    redis = redis_instance()
    pid = redis.pid()
    if redis.stop():
        print(f"stopped redis (pid {pid})")
        stopped += 1
    for instance in _all_postgres_instances():
        pooler = pooler_for(instance)
        pid = pooler.pid()
        if pooler.stop():
            print(f"stopped pgbouncer {instance.name} (pid {pid})")
            stopped += 1
        if isinstance(instance, PostgresInstance):
            # Replicas of a shape not configured now: their Patroni first, or it restarts them.
            for what in replicated.stop_leftovers(var_dir(), instance.name):
                print(f"stopped {what}")
                stopped += 1
        pid = instance.pid()
        if instance.stop():
            kind = "postgres" if isinstance(instance, PostgresInstance) else "patroni replicas of"
            print(f"stopped {kind} {instance.name} (pid {pid or 'gone'})")
            stopped += 1
    etcd = etcd_instance()
    pid = etcd.pid()
    if etcd.stop():
        print(f"stopped etcd (pid {pid})")
        stopped += 1
    if not stopped:
        print("nothing was running")
    return 0


# -- status ---------------------------------------------------------------------


def status() -> int:
    """One row per component; exit 3 unless every component answers."""
    rows: list[tuple[str, str, str, str, str]] = []
    pools: list[str] = []
    replication: list[str] = []
    if lc.REPLICAS > 1:
        etcd = etcd_instance()
        rows.append(("etcd", "etcd", str(etcd.port), str(etcd.pid() or "-"), _yes(etcd.is_ready())))
    for instance, dbname in postgres_instances():
        pid = instance.pid()
        port = instance.running_port() or instance.port
        answers = instance.is_ready()
        if isinstance(instance, ReplicatedDatabase):
            for node in instance.nodes:
                running = node.is_running()
                rows.append(
                    (node.name, "patroni", str(node.port), str(node.pid() or "-"), _yes(running))
                )
            rows.append((instance.name, "dbproxy", str(port), str(pid or "-"), _yes(answers)))
            replication.extend(_replication_lines(instance))
        else:
            rows.append((instance.name, "postgres", str(port), str(pid or "-"), _yes(answers)))
        pooler = pooler_for(instance)
        pooled = pooler.pid()
        try:
            pools.append(f"  {instance.name:<10} {dbname:<18} {pooler.pool(dbname).summary()}")
            answers = True
        except (OSError, psycopg2.Error, NoPooler) as exc:
            pools.append(f"  {instance.name:<10} {dbname:<18} pooler does not answer: {exc}")
            answers = False
        row = (instance.name, "pgbouncer", str(pooler.port), str(pooled or "-"), _yes(answers))
        rows.append(row)
    redis = redis_instance()
    rows.append(
        ("redis", "redis", str(redis.port), str(redis.pid() or "-"), _yes(redis.is_ready()))
    )
    # `inspect ping` takes seconds (it starts Celery); run it while the rest is checked.
    worker, beat = celery_procs.worker(var_dir()), celery_procs.beat(var_dir())
    worker_answers: list[bool] = []
    ping = threading.Thread(target=lambda: worker_answers.append(worker.answers()))
    ping.start()
    for node in configured_app_nodes():
        rows.append(
            (node.name, "uwsgi", str(node.port), str(node.pid() or "-"), _yes(node.is_ready()))
        )
    haproxy = haproxy_instance(state.load(state_file()))
    answers = haproxy.frontend_ready() and haproxy.stats_ready()
    ports = f"{haproxy.http_port},{haproxy.stats_port}"
    rows.append(("haproxy", "haproxy", ports, str(haproxy.pid() or "-"), _yes(answers)))
    ping.join()
    rows.append((worker.name, "celery", "-", str(worker.pid() or "-"), _yes(any(worker_answers))))
    rows.append((beat.name, "celery", "-", str(beat.pid() or "-"), _yes(beat.answers())))

    header = ("NAME", "KIND", "PORT", "PID", "ANSWERS")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    print("pools (PgBouncer, transaction mode; servers = connections to PostgreSQL / cap):")
    print("\n".join(pools))
    if replication:
        print("replication (Patroni; lag = bytes of WAL the standby has not replayed):")
        print("\n".join(replication))
    return 0 if all(row[4] == "yes" for row in rows) else EXIT_NOT_ALL_UP


def _replication_lines(database: ReplicatedDatabase) -> list[str]:
    members = database.members()
    if not members:
        return [f"  {database.name:<10} no member could list the others (is etcd up?)"]
    lines = []
    for member in members:
        lag = "" if member.get("role") == "leader" else f"  lag {member.get('lag', '?')}"
        lines.append(
            f"  {database.name:<10} {member.get('name', '?'):<14} :{member.get('port', '?'):<6}"
            f" {member.get('role', '?'):<13} {member.get('state', '?')}"
            f"  timeline {member.get('timeline', '?')}{lag}"
        )
    return lines


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


# -- add-shard ------------------------------------------------------------------


def database_ports(port: int) -> set[int]:
    """The ports a database on `port` takes: its own, its pooler's, and in the replicated
    shape each replica's and its Patroni's."""
    server = database_server("-", port)
    own = server.ports() if isinstance(server, ReplicatedDatabase) else {port}
    return own | {lc.pooler_port(port)}


def reserved_ports() -> set[int]:
    """Every port the cluster's own components use, running or not."""
    servers = {lc.DIRECTORY_PORT, *(port for port, _ in lc.SHARDS.values())}
    databases = set().union(*(database_ports(port) for port in servers))
    etcd = {lc.ETCD_PORT, lc.ETCD_PORT + 1} if lc.REPLICAS > 1 else set()
    return databases | etcd | {lc.REDIS_PORT, lc.HTTP_PORT, lc.STATS_PORT, *lc.APP_PORTS}


def add_shard(alias: str | None) -> int:
    """Start a PostgreSQL instance for a new shard and register it (idempotent per alias).

    Needs the directory running (`up`): the alias is checked against its registry,
    and `manage.py add_shard` lists the shard there.
    """
    directory, directory_db = postgres_instances()[0]
    if not directory.is_ready():
        raise ClusterError(
            f"the directory PostgreSQL ({lc.HOST}:{directory.port}) does not answer; "
            "start the cluster with `python -m cluster up` first"
        )
    path = extra_shards.state_path(var_dir())
    reserved = reserved_ports()
    with extra_shards.locked(var_dir()):
        recorded = extra_shards.load(path)
        shard, new = extra_shards.plan(
            alias,
            recorded=recorded,
            configured=[*lc.SHARDS, directory.name],
            registered=extra_shards.registered_shards(directory, directory_db),
            reserved_ports=reserved,
            base=extra_shards.port_base(),
            # A shard's server, its pooler (and replicas) all need their port.
            in_use=lambda port: any(
                port_in_use(each) or not bindable(each) or each in reserved
                for each in database_ports(port)
            ),
        )
        print("postgres:")
        instance = database_server(shard.alias, shard.port)
        started = instance.ensure_running()
        pooler = pooler_for(instance)
        pooled = pooler.ensure_running()
        print(
            f"  {shard.alias:<10} {lc.HOST}:{shard.port}  "
            f"{'started' if started else 'already running'}"
            f"{' (new instance)' if new else ''}, {_data_of(instance)}; pgbouncer"
            f" {lc.HOST}:{pooler.port} {'started' if pooled else 'already running'}",
            flush=True,
        )
        if new:
            # Recorded once it runs, so `down` and `up` know it even if the next step fails.
            extra_shards.save(path, {**recorded, shard.alias: shard})
        data = state.load(state_file())
        if data:  # `up` made it; keep its list of shards whole
            data["shards"] = shard_endpoints()
            state.save(state_file(), data)

        print("django:", flush=True)
        try:
            port = lc.client_port(shard.port)
            add_extra_shard(shard.alias, port, shard.db, var_dir() / "log" / "manage.log")
        except ClusterError as exc:
            raise ClusterError(
                f"{exc}\n{shard.alias} runs but is not registered; "
                f"run `python -m cluster add-shard {shard.alias}` again"
            ) from exc
    print()
    print(
        f"{shard.alias} is active at {lc.HOST}:{port}/{shard.db} ({_server_of(instance)},"
        f" its pooler on :{pooler.port}). App nodes and workers "
        "use it within SHARD_REGISTRY_TTL seconds (default 5), without a restart."
    )
    print("See it: .venv/bin/python manage.py cluster_status")
    return 0


def _server_of(server: DatabaseServer) -> str:
    if isinstance(server, ReplicatedDatabase):
        return f"its primary through the proxy on :{server.port}"
    return f"PostgreSQL on :{server.port}"


def _data_of(server: DatabaseServer) -> str:
    if isinstance(server, ReplicatedDatabase):
        return "replicas " + ", ".join(f"{node.name} :{node.port}" for node in server.nodes)
    return f"data {shown(server.data_dir)}"


# -- switchover -----------------------------------------------------------------

# How long PAUSE may wait for the transactions in flight before the switchover gives up.
SWITCHOVER_PAUSE_TIMEOUT = 15.0


def switchover(name: str, candidate: str | None) -> int:
    """Hand a replicated database's primary role to a standby with no failed transaction:
    the pooler holds new transactions while Patroni switches, then resumes them."""
    servers = {server.name: (server, dbname) for server, dbname in postgres_instances()}
    if name not in servers:
        raise ClusterError(f"no database {name!r}; choose from {', '.join(servers)}")
    server, dbname = servers[name]
    if not isinstance(server, ReplicatedDatabase):
        raise ClusterError(f"{name} has no standby: start the cluster with FLEET_REPLICAS=2")
    started = time.monotonic()
    with pooler_for(server).paused(dbname, SWITCHOVER_PAUSE_TIMEOUT):
        old, new = server.switchover(candidate)
    print(f"{name}: {new} is the primary (was {old}); took {time.monotonic() - started:.1f}s")
    return 0


# -- reload / simulate ----------------------------------------------------------


def reload() -> int:
    """Graceful reload of every app node (`r` to its master fifo), e.g. after a code change.

    One node at a time, each back in HAProxy's rotation before the next, so the site
    stays up throughout.
    """
    haproxy = haproxy_instance(state.load(state_file()))
    balanced = haproxy.pid() is not None
    for node in configured_app_nodes():
        if not node.reload():
            print(f"{node.name}: not running")
            continue
        if balanced:
            haproxy.wait_all_up(ALL_UP_TIMEOUT, names=[node.name])
        print(f"{node.name}: reloaded{' and back in rotation' if balanced else ''}", flush=True)
    return 0


def simulate_command(seconds: float | None) -> int:
    """Demo devices upload through HAProxy; exit 1 unless every batch was accepted."""
    data = state.load(state_file())
    url = data.get("url") or f"http://{lc.HOST}:{lc.HTTP_PORT}/"
    result = simulate(
        url, data.get("demo_devices") or [], batches=SIMULATED_BATCHES, seconds=seconds
    )
    print(
        f"{result.batches_accepted}/{result.batches_sent} batches accepted "
        f"({result.readings_accepted} readings) from {result.devices} demo devices with a token"
    )
    if result.devices == 0:
        print("no demo device tokens in var/cluster.json (they exist only for the first `up`)")
    return 0 if result.batches_sent and result.batches_accepted == result.batches_sent else 1


# -- entry point ----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cluster",
        description="Run the local sharded cluster: PostgreSQL, Redis, uWSGI nodes behind "
        "HAProxy, Celery worker and beat.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start everything, migrate and seed demo data (idempotent)")
    commands.add_parser("down", help="stop what `up` started")
    commands.add_parser("status", help="show each component; exit 3 unless all answer")
    commands.add_parser("reload", help="gracefully reload every app node (new code)")
    add = commands.add_parser(
        "add-shard",
        help="start a PostgreSQL instance for a new shard and register it (idempotent)",
        description="Start a new PostgreSQL instance under var/pg/ALIAS on the first free "
        f"port from ${extra_shards.PORT_BASE_ENV} (default {extra_shards.DEFAULT_PORT_BASE}), "
        "then run `manage.py add_shard ALIAS --create-db` on it. The shard is recorded in "
        f"var/{extra_shards.STATE_FILE}, so `up` restarts it, `down` stops it and `status` "
        "shows it. Running it again for a recorded alias just makes sure it runs and is "
        "registered. Needs the cluster up.",
    )
    add.add_argument(
        "alias", nargs="?", default=None, help="shard alias (default: the next free shard_N)"
    )
    switch = commands.add_parser(
        "switchover",
        help="hand a replicated database's primary role to its standby (FLEET_REPLICAS >= 2)",
        description="A planned switchover: the database's pooler holds new transactions"
        " (PAUSE), Patroni demotes the primary and promotes a synchronous standby, the proxy"
        " follows it, and the pooler resumes: clients wait a few seconds, none fails.",
    )
    switch.add_argument("name", help="directory, shard_1, ...")
    switch.add_argument("--to", default=None, help="the member to promote (default: a standby)")
    sim = commands.add_parser("simulate", help="demo devices upload batches through HAProxy")
    sim.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="keep uploading (one batch per device per second) for this long; "
        f"default: {SIMULATED_BATCHES} batches per device",
    )
    args = parser.parse_args(argv)
    handlers = {
        "up": up,
        "down": down,
        "status": status,
        "reload": reload,
        "simulate": lambda: simulate_command(args.seconds),
        "add-shard": lambda: add_shard(args.alias),
        "switchover": lambda: switchover(args.name, args.to),
    }
    try:
        return handlers[args.command]()
    except ClusterError as exc:
        print(f"cluster {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
