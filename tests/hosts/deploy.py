"""The inventory, secrets and ansible-playbook runs for the test hosts.

Layout (eight hosts deployed, two more added as a shard later); every database on two
replicas, Patroni keeping one of them primary:
    h1  directory_db, redis, etcd      h5  shard_db (shard_2), etcd
    h2  directory_db                   h6  shard_db (shard_2)
    h3  shard_db (shard_1), etcd       h7  app, celery_worker, celery_beat, lb (backup)
    h4  shard_db (shard_1)             h8  app, lb (first: holds the floating address)
    h9, h10  shard_db (shard_3), added by add_shard.yml
Every database host runs Patroni, HAProxy (to its database's primary) and PgBouncer;
devices use the balancers' floating address LB_VIP.
"""

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.hosts.testhosts import CONTROL_ADDRESS, ROOT, SUBNET, TestHosts

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
RUN_DIR = ROOT / "run"
PLAY_TIMEOUT = 1200
# The balancers' floating address (keepalived) on the bridge's network.
LB_VIP = f"{SUBNET}.100"
# Small, so that the test sees more clients than server connections on each pooler.
POOL_SIZE = 6
POOLER_PORT = 6432

# Short cache lives and move clean-up grace, so a moved device's old rows go within
# seconds and the test can check every reading is stored on one shard only.
TEST_ENV = {
    "PLACEMENT_LOCAL_TTL": "2",
    "MOVE_CLEANUP_GRACE_SECONDS": "4",
}


# Each database's replicas, by inventory name, in the inventory's order.
DIRECTORY_HOSTS = ["h1", "h2"]
SHARD_HOSTS = {"shard_1": ["h3", "h4"], "shard_2": ["h5", "h6"], "shard_3": ["h9", "h10"]}
ETCD_HOSTS = ["h1", "h3", "h5"]


def layout(with_third_shard: bool) -> dict[str, list[tuple[str, dict]]]:
    aliases = ["shard_1", "shard_2"] + (["shard_3"] if with_third_shard else [])
    shards = [
        (name, {"fleet_shard_alias": alias}) for alias in aliases for name in SHARD_HOSTS[alias]
    ]
    return {
        "etcd": [(name, {}) for name in ETCD_HOSTS],
        "directory_db": [(name, {}) for name in DIRECTORY_HOSTS],
        "redis": [("h1", {})],
        "shard_db": shards,
        "app": [("h7", {}), ("h8", {})],
        "celery_worker": [("h7", {})],
        "celery_beat": [("h7", {})],
        "lb": [("h8", {}), ("h7", {})],
    }


def write_inventory(hosts: TestHosts, with_third_shard: bool) -> Path:
    by_name = {host.name: host for host in hosts.hosts}
    children = {}
    for group, members in layout(with_third_shard).items():
        group_hosts = {}
        for name, extra in members:
            group_hosts[name] = {"ansible_host": by_name[name].address, **extra}
        children[group] = {"hosts": group_hosts}
    # The example inventory's settings, then the test's own (later files win).
    inventory_dir = RUN_DIR / "inventory"
    shutil.rmtree(inventory_dir, ignore_errors=True)
    (inventory_dir / "group_vars" / "all").mkdir(parents=True)
    shutil.copy(
        ANSIBLE_DIR / "inventories" / "example" / "group_vars" / "all.yml",
        inventory_dir / "group_vars" / "all" / "10-example.yml",
    )
    overrides = {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(hosts.key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no"
        " -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        # The hosts have no mirror: every package is in their base already.
        "fleet_apt_update_cache": False,
        # The control node reads the databases to check what was stored.
        "fleet_admin_addresses": [CONTROL_ADDRESS],
        "fleet_env_extra": TEST_ENV,
        "fleet_app_processes": 2,
        "fleet_lb_vip": f"{LB_VIP}/24",
        "fleet_lb_interface": "eth0",
        "fleet_pool_size": POOL_SIZE,
        "fleet_pooler_port": POOLER_PORT,
    }
    (inventory_dir / "group_vars" / "all" / "20-test.yml").write_text(json.dumps(overrides))
    path = inventory_dir / "hosts.yml"
    path.write_text(json.dumps({"all": {"children": children}}, indent=2))  # JSON is YAML
    return path


def write_secrets() -> Path:
    """A fresh secrets file outside the repository, as an operator would keep it."""
    values = {
        name: secrets.token_urlsafe(24)
        for name in (
            "vault_fleet_db_password",
            "vault_fleet_redis_password",
            "vault_fleet_provisioning_key",
            "vault_fleet_haproxy_stats_password",
            "vault_fleet_replication_password",
            "vault_fleet_rewind_password",
            "vault_fleet_patroni_api_password",
        )
    }
    values["vault_fleet_secret_key"] = secrets.token_urlsafe(50)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = RUN_DIR / "secrets.yml"
    path.write_text(json.dumps(values, indent=2))
    path.chmod(0o600)
    return path


def read_secrets(path: Path) -> dict[str, str]:
    return json.loads(path.read_text())


def ansible_playbook(
    playbook: str, inventory: Path, secrets_file: Path, *extra: str, log_name: str
) -> tuple[float, Path]:
    """Run a playbook from ansible/; raise with the log's tail when it fails."""
    binary = Path(sys.executable).with_name("ansible-playbook")
    log = RUN_DIR / log_name
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run(
            [str(binary), "-i", str(inventory), playbook, "-e", f"@{secrets_file}", *extra],
            cwd=ANSIBLE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
            timeout=PLAY_TIMEOUT, check=False,
        )  # fmt: skip
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-60:])
        raise AssertionError(f"ansible-playbook {playbook} failed ({proc.returncode}):\n{tail}")
    return elapsed, log


def play_recap(log: Path) -> str:
    lines = log.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("PLAY RECAP"):
            return "\n".join(x for x in lines[i:] if x.strip())
    return ""
