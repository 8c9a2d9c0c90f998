"""Counts in words for every message sbert prints: '1 row', '2 rows'."""

from __future__ import annotations


def plural(count: int, noun: str) -> str:
    """'1 row', '2 rows', '0 rows'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
