"""Who may import whom: the layering that keeps routing, the fence and the tasks apart."""

import ast
from pathlib import Path

from core.celery import app as celery_app
from core.local_cluster import REPO_ROOT
from shards.deletion import PURGE_TASK
from shards.import_queue import IMPORT_SHARD_TASK


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_nothing_in_shards_imports_the_tasks_module():
    """shards.tasks calls into the other modules; they queue tasks by name (no import circle).

    Management commands are entry points nothing imports, so they may queue a task object.
    """
    importers = [
        path.relative_to(REPO_ROOT).as_posix()
        for path in (REPO_ROOT / "shards").rglob("*.py")
        if path.name != "tasks.py"
        and "management" not in path.parts
        and "shards.tasks" in imported_modules(path)
    ]
    assert importers == []


def test_the_tasks_sent_by_name_exist():
    celery_app.loader.import_default_modules()
    assert IMPORT_SHARD_TASK in celery_app.tasks
    assert PURGE_TASK in celery_app.tasks


def test_routing_imports_no_shard_code():
    importers = [
        path.relative_to(REPO_ROOT).as_posix()
        for path in (REPO_ROOT / "routers").rglob("*.py")
        if any(module.startswith("shards") for module in imported_modules(path))
    ]
    assert importers == []


def test_only_the_fence_module_names_the_fence_table():
    """Every query on the fence table is written in shards/fence.py."""
    writers = [
        path.relative_to(REPO_ROOT).as_posix()
        for folder in ("shards", "core", "routers", "central_admin", "portal", "api", "bench")
        for path in (REPO_ROOT / folder).rglob("*.py")
        if path.name != "fence.py"
        and "migrations" not in path.parts
        and any(
            marker in path.read_text()
            for marker in ("DeviceFence._meta.db_table", "shards_devicefence", "FENCE_TABLE =")
        )
    ]
    assert writers == []
