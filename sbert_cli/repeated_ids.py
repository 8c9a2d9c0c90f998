"""Ids that repeat across a run's output: found in bounded memory (8 bytes an id), counted, the first few named."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sbert_cli.errors import InputDataError

_MASK = (1 << 64) - 1
SHOWN = 3  # repeated ids named in a line


def _key(value: Any) -> int:
    """A 64-bit key: an integer id itself (ids are within 64 bits), a string's hash. One output's ids are of one
    type, so an integer's key never meets a string's."""
    return (value if isinstance(value, int) else hash(value)) & _MASK


class RepeatedIds:
    """The ids seen so far, as sorted runs of keys merged as they grow (a log-structured set), so checking a batch
    costs a binary search per run and memory stays the keys; not a Python set, whose entries cost ten times more."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []
        self.count = 0  # rows whose id an earlier row already had
        self.first: list[Any] = []  # the first repeated ids, each once
        self.more = False  # other ids repeat too

    def add(self, ids: Sequence[Any]) -> list[int]:
        """Take a batch of ids; returns the positions of those that repeat an earlier one (of this batch or before)."""
        if not ids:
            return []
        keys = np.fromiter((_key(value) for value in ids), dtype=np.uint64, count=len(ids))
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        repeat = np.zeros(len(keys), dtype=bool)
        repeat[order[1:][ordered[1:] == ordered[:-1]]] = True  # a later one of equal keys in this batch
        for run in self.runs:
            at = np.minimum(np.searchsorted(run, keys), len(run) - 1)
            repeat |= run[at] == keys
        self._push(np.unique(ordered))
        found = np.flatnonzero(repeat).tolist()
        self.count += len(found)
        for index in found:
            if ids[index] not in self.first:
                if len(self.first) < SHOWN:
                    self.first.append(ids[index])
                else:
                    self.more = True
        return found

    def _push(self, run: np.ndarray) -> None:
        self.runs.append(run)
        while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
            newer, older = self.runs.pop(), self.runs.pop()
            self.runs.append(np.union1d(older, newer))

    def shown(self) -> str:
        """'2 rows repeat an earlier row's id ('a', 'b')'."""
        names = ", ".join(repr(value) for value in self.first) + (", ..." if self.more else "")
        rows = "1 row repeats" if self.count == 1 else f"{self.count} rows repeat"
        return f"{rows} an earlier row's id ({names})"


_FIX = "ids must be unique: fix the input, or pass --on-error skip to keep the rows and count the repeats"


def repeated_error(input_name: str, ids: RepeatedIds, row: tuple[int, Any] | None = None) -> InputDataError:
    """--on-error fail: a repeated id is bad input, as a null one is (a join on the output could not tell the rows
    apart); --on-error skip keeps the rows and the summary counts them. `row`: the first repeat, (row, id), where a
    run stops at it (the local engine); else the whole output's count (Ray's, checked before it publishes)."""
    if row is not None:
        return InputDataError(f"{input_name}: row {row[0]}: id {row[1]!r} repeats an earlier row's; {_FIX}")
    return InputDataError(f"{input_name}: {ids.shown()}; {_FIX}")
