"""Waiting in tests for something another thread or process brings about."""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll ``pred()`` until it holds or ``timeout`` seconds pass; its last value, as a bool."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())
