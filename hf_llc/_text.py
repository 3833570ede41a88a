"""Plain-text output shared by every summary hf_llc prints or writes: one number formatter
(:func:`fmt`) and one table layout (:func:`table_lines`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def fmt(value: Any, spec: str = ".4g", missing: str = "-") -> str:
    """``value`` formatted with ``spec``; ``missing`` when it is ``None``, not a number, or not
    finite (so a table cell never shows ``nan`` by accident)."""
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return missing
    return format(value, spec)


def table_lines(
    head: Sequence[str], rows: Sequence[Sequence[str]], *, rule: bool = False
) -> list[str]:
    """The lines of a plain-text table: every cell left-aligned to its column's widest entry,
    columns separated by two spaces; with ``rule``, a line of dashes under the header."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    if rule:
        lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return lines
