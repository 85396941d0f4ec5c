"""Another app node, as far as the caches go: a process of its own asked over a pipe.

It has its own in-process caches and shares Redis and the test directory with the
test, so it shows what every other node of the cluster sees after a change.
"""

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from core import local_cluster
from tests.process_env import child_process_env

_NODE = """
import json, sys
import django
django.setup()
from core.credentials import device_id_for_token
for line in sys.stdin:
    print(json.dumps(device_id_for_token(line.strip())), flush=True)
"""


class OtherNode:
    """Answers `device_for(token)` as an app node's authentication would."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _NODE],
            cwd=local_cluster.REPO_ROOT,
            env=child_process_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def device_for(self, token: str) -> int | None:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(token + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the other node died"
        return json.loads(line)

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=10)


@pytest.fixture
def other_node(shards, django_db_blocker) -> Iterator[OtherNode]:
    node = OtherNode()
    try:
        yield node
    finally:
        node.close()
