"""Wording of the messages a user reads: counts with the right plural, figures without exponents."""

from __future__ import annotations


def plural(n: int, word: str, many: str = "") -> str:
    """``n`` with ``word``, in the plural unless ``n`` is 1: "1 shard", "2 shards", "1,024 rows".
    ``many`` is the plural where adding an "s" is wrong."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def figure(value: float) -> str:
    """A measured figure as a person reads it: "1,290" rather than "1.29e+03", "0.976", "10.8"."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
