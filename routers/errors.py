"""Errors raised when a query cannot be routed; each says what the caller must do."""


class RoutingError(Exception):
    """Base for everything routers/ refuses to guess about."""


class MissingDeviceContext(RoutingError):
    """A shard model was queried without saying which device (or shard) it is for."""


class UnknownDevice(RoutingError):
    """The directory has no placement for this device id."""


class UnknownShard(RoutingError):
    """The shard alias is not in the registry (or is retired)."""


class FanOutError(RoutingError):
    """One or more shards failed during a parallel cross-shard call."""

    def __init__(self, errors: dict[str, BaseException]) -> None:
        self.errors = errors
        detail = "; ".join(f"{alias}: {exc!r}" for alias, exc in sorted(errors.items()))
        super().__init__(f"{len(errors)} shard(s) failed: {detail}")
