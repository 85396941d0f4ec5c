"""The directory's connection alias, and telling a shard's alias from it."""

DIRECTORY_ALIAS = "default"


def is_shard_alias(alias: str) -> bool:
    return alias != DIRECTORY_ALIAS
