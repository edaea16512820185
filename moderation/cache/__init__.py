"""The verdict cache: findings reused for the same tenant, image, policy version and analyzer versions."""

from moderation.cache.verdicts import LocalStore, RedisStore, VerdictCache, build_store

__all__ = [
    "LocalStore",
    "RedisStore",
    "VerdictCache",
    "build_store",
]
