"""var/cluster.json: what `up` started plus the generated demo credentials.

The file holds passwords and device tokens, so it is written atomically with mode 600.
Unknown keys are preserved, so other tools may add their own.
"""

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def load(path: Path) -> dict[str, Any]:
    """The stored state, or {} when there is none (or it is unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` atomically with `data` as JSON, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def merge_devices(
    previous: list[dict[str, Any]], current: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Devices as reported now, with each null token filled from the first run that saw it.

    seed_demo only knows a device's token on the run that created it, so the stored one
    is the only copy.
    """

    def key(device: dict[str, Any]) -> object:
        return device.get("device_id", device.get("serial"))

    known = {key(device): device.get("token") for device in previous if device.get("token")}
    merged = []
    for device in current:
        device = dict(device)
        if not device.get("token") and key(device) in known:
            device["token"] = known[key(device)]
        merged.append(device)
    return merged
