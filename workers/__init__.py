"""Celery wiring for the moderation pipeline. Tasks are thin shims over `moderation`."""
