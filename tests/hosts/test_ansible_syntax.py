"""The Ansible deployment (ansible/) parses and lints clean, in every test run.

No host is contacted: `--syntax-check` loads the playbooks, roles and the example
inventory; ansible-lint checks them against its production profile (offline).
The real deployment is proven by tests/e2e/test_ansible_hosts.py on test hosts.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent
PLAYBOOKS = ["site.yml", "add_shard.yml"]


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    # A dev dependency (pyproject.toml): missing means bootstrap did not run, a failure.
    assert found, f"{name} not found next to {sys.executable} or on PATH; run bin/bootstrap"
    return found


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"), "NO_COLOR": "1"}
    return subprocess.run(
        args, cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(playbook: str) -> None:
    proc = run(
        tool("ansible-playbook"),
        *("-i", "inventories/example/hosts.yml"),
        "--syntax-check",
        playbook,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint_clean() -> None:
    proc = run(tool("ansible-lint"), "--offline", "--nocolor", *PLAYBOOKS, "roles")
    assert proc.returncode == 0, proc.stdout + proc.stderr
