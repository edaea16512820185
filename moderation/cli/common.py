"""What every command shares: the consoles, the settings, and redacting credentials in URLs."""

from __future__ import annotations

from rich.console import Console

from moderation.settings import Settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
err = Console(stderr=True)
out = Console()


def settings() -> Settings:
    return Settings()


def redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}" if ":" in creds else url
    return url
