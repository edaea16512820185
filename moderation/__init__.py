"""Image content-moderation pipeline: the domain, the HTTP API and the CLI.

`workers/` (Celery wiring) depends on this package, never the reverse.
"""

__version__ = "0.1.0"
