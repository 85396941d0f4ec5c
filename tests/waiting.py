"""Waiting for something another thread or process does: the suite's one polling helper."""

import time
from collections.abc import Callable


def wait_until(
    condition: Callable[[], object], what: str, timeout: float = 60.0, interval: float = 0.05
) -> float:
    """Poll `condition` until it is true; fail naming `what` after `timeout` seconds.

    Returns the seconds it took, for tests that also report how long something lasted.
    """
    started = time.monotonic()
    deadline = started + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)
    return time.monotonic() - started
