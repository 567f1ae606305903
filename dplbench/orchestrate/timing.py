"""Elapsed time and ETA text of the `[n/N]` progress lines (no Ray import: the in-process loop uses it too)."""

from __future__ import annotations


def clock(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def eta_text(done: int, total: int, elapsed: float) -> str:
    """``elapsed 1:15, ETA 3:45`` (the mean time per finished unit times the units left)."""
    left = total - done
    eta = f", ETA {clock(elapsed / done * left)}" if done and left else ""
    return f"elapsed {clock(elapsed)}{eta}"
