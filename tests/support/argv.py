"""Reading command lines as deployment files write them (compose, Kubernetes)."""

from __future__ import annotations


def option(args: list[str], *names: str) -> str | None:
    """The value of the first of `names` in `args`: `--name value`, `-n value` or `--name=value`."""
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None
