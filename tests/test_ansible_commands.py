"""The manage.py commands the Ansible roles run take whatever values the secrets file holds."""

from pathlib import Path

import pytest
import yaml

from core.credentials import token_digest
from core.local_cluster import REPO_ROOT
from core.models import ProvisioningKey
from tests.move_helpers import manage

MIGRATE_TASKS = REPO_ROOT / "ansible" / "roles" / "fleet_migrate" / "tasks" / "main.yml"


def task_argv(path: Path, name: str, values: dict[str, str]) -> list[str]:
    """A command task's argv with its `{{ variable }}` placeholders filled in."""
    task = next(t for t in yaml.safe_load(path.read_text()) if t["name"] == name)
    argv = task["ansible.builtin.command"]["argv"]
    for variable, value in values.items():
        argv = [value if arg == f"{{{{ {variable} }}}}" else arg for arg in argv]
    assert not [arg for arg in argv if "{{" in arg], argv
    return argv


# secrets.token_urlsafe, as the test deployment and an operator generate keys, starts
# with "-" once in 64 keys.
@pytest.mark.parametrize(
    "key", ["-Zb4Qm0hV9rJ2sKx7pLwT1yNcE3uGdAf", "plain-Zb4Qm0hV9rJ2sKx7pLwT1y"]
)
def test_the_provisioning_key_task_sets_any_generated_key(shards, key):
    argv = task_argv(
        MIGRATE_TASKS,
        "Set the provisioning key devices enrol with",
        {"fleet_provisioning_key_name": "default", "fleet_provisioning_key": key},
    )
    assert argv[0] == "/usr/local/bin/fleet-manage"
    done = manage(*argv[1:])
    assert done.returncode == 0, done.stderr
    assert ProvisioningKey.objects.get(name="default").digest == token_digest(key)
