"""Counts and lists in words for every message sbert prints: '1 row', '2 rows', 'CSV, TSV or JSONL'."""

from __future__ import annotations


def plural(count: int, noun: str) -> str:
    """'1 row', '2 rows', '0 rows'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def or_list(words: list[str]) -> str:
    """'CSV, TSV or JSONL', 'CSV': a list of alternatives as a sentence names them."""
    return words[-1] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
