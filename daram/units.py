"""Durations and sizes as people write them in settings: ``11h30m``, ``18GB``."""

from __future__ import annotations

import math
import re

from daram.errors import DaramError

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([dhms])")


def parse_duration(text: str, setting: str = "run.time_limit") -> float:
    """``"11h30m"``, ``"90m"``, ``"45s"``, ``"1d"`` or plain seconds -> seconds; "" -> 0 (no limit)."""
    text = text.strip().lower()
    if not text:
        return 0.0
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not 0 < seconds < float("inf"):
            raise DaramError(f"{setting} must be a finite duration > 0, got {text!r}")
        return seconds
    compact = text.replace(" ", "")
    if not re.fullmatch(f"(?:{_DURATION.pattern})+", compact):
        raise DaramError(f"{setting}: cannot read {text!r}; use e.g. 11h30m, 90m or 45s")
    seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(compact))
    if not seconds > 0:
        raise DaramError(f"{setting} must be > 0, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def _bytes(text: str, setting: str, example: str) -> float:
    """``"18GB"``, ``"1.5GiB"``, ``"512k"`` or plain bytes -> bytes: GB is 10^9 and GiB 2^30, as `df -H` and `df -h`
    count them."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise DaramError(f"{setting}: cannot read {text!r}; use e.g. {example}")
    number, unit = float(match.group(1)), match.group(2).lower()
    base = 1024 if "i" in unit else 1000
    return number * base ** _SIZE_POWERS[unit.rstrip("ib")]


def parse_size(text: str, setting: str = "run.disk_budget") -> int:
    """``"18GB"``, ``"40MB"``, ``"1.5GiB"``, ``"512k"`` or plain bytes -> bytes; "" -> 0 (no limit)."""
    if not text.strip():
        return 0
    size = _bytes(text, setting, "18GB, 40MB or 1.5GiB")
    if not (size >= 1 and math.isfinite(size)):
        raise DaramError(f"{setting} must be at least one byte, got {text!r}")
    return int(size)


_LINES = re.compile(r"\s*(\d+(?:\.\d+)?)\s*lines?\s*")


def parse_amount(text: str, setting: str) -> tuple[int, str]:
    """``"300MB"`` -> ``(300_000_000, "bytes")``; ``"20000 lines"`` -> ``(20000, "lines")``: a size as
    :func:`parse_size` reads it, with its unit written out (a bare number could be either), or a count of lines."""
    example = '"300MB", "1.5GiB" or "20000 lines"'
    lines = _LINES.fullmatch(text)
    if lines:
        if "." in lines.group(1):
            raise DaramError(f"{setting}: a count of lines is a whole number; got {text!r}")
        return int(lines.group(1)), "lines"
    if not text.strip()[-1:].isalpha():
        raise DaramError(f"{setting} must be an amount like {example}; got {text!r}")
    return int(_bytes(text, setting, example)), "bytes"


def format_size(size: float) -> str:
    """Bytes in decimal units, three significant digits: 1.23 GB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1000
    raise AssertionError
