"""Where the checkout is (the working directory and PYTHONPATH of every process a test starts)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
