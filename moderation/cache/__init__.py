"""The verdict cache: findings reused for the same image, policy version and analyzer versions."""

from moderation.cache.verdicts import LocalStore, RedisStore, VerdictCache

__all__ = [
    "LocalStore",
    "RedisStore",
    "VerdictCache",
]
