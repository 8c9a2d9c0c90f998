"""--engine ray's unit of work and of --resume: rounds of whole input files, each published and recorded in the
output's manifest (the local engine's, in the state folder beside the output) once all its shards are written."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sbert_cli.io.manifest import Manifest, ShardEntry, file_sha256
from sbert_cli.io.storage import StorePath, readable_locally, size_of

if TYPE_CHECKING:
    from pathlib import Path

    from sbert_cli.io.inputs import InputFile
    from sbert_cli.io.paths import DirectoryLayout
    from sbert_cli.job import EncodeJob

ROUND_BYTES = 256 << 20  # input bytes a round reads: what a crash can cost again, against Ray's start-up per round


def round_bytes() -> int:
    """SBERT_RAY_ROUND_BYTES sets the round size (smaller: less redone after a crash, more rounds to start)."""
    value = os.environ.get("SBERT_RAY_ROUND_BYTES")
    return max(1, int(value)) if value and value.isdigit() else ROUND_BYTES


@dataclass(frozen=True)
class Round:
    """Input files [first, end) of the sorted input, read, encoded and published together."""

    index: int
    first: int
    end: int


def plan_rounds(files: tuple[InputFile, ...], size: int) -> list[Round]:
    """Consecutive files, each round at least `size` bytes (but the last), in the input's sorted order: the same
    input and size always give the same rounds, which is what lets a resumed run skip the finished ones."""
    rounds, first, total = [], 0, 0
    for index, file in enumerate(files):
        total += file.size
        if total >= size:
            rounds.append(Round(len(rounds), first, index + 1))
            first, total = index + 1, 0
    if first < len(files):
        rounds.append(Round(len(rounds), first, len(files)))
    return rounds


def recorded_options(job: EncodeJob, size: int) -> dict[str, Any]:
    """What a resumed Ray run must match: the model as named (the driver loads none), the columns, the output's
    form and the rounds' size. 'engine' keeps the local engine from resuming a Ray run's directory, and back."""
    model = {key: value for key, value in asdict(job.model).items() if key not in ("device", "threads") and value is not None}
    spec = job.input
    return {
        "engine": "ray", "model": model, "format": spec.format, "text_column": spec.text_column, "id_column": spec.id_column,
        "quoting": spec.quoting, "encoding": spec.encoding, "dtype": job.output.dtype, "calibration": job.output.calibration,
        "shard_rows": job.shard_rows, "on_error": "skip" if job.skip_bad_rows else "fail", "round_bytes": size,
    }


def listed_rounds(manifest: Manifest | None) -> Counter[tuple[int, int]]:
    """How many shards the manifest lists for each round (by its files' range), before they are checked."""
    return Counter((entry.first_row, entry.end_row) for entry in manifest.shards) if manifest is not None else Counter()


def finished_rounds(rounds: list[Round], listed: Counter[tuple[int, int]], manifest: Manifest) -> set[int]:
    """Rounds whose every listed shard is still intact; the entries of the others are dropped (their files too), so
    that the round is done again whole."""
    intact = Counter((entry.first_row, entry.end_row) for entry in manifest.shards)
    done = {r.index for r in rounds if listed[(r.first, r.end)] and intact[(r.first, r.end)] == listed[(r.first, r.end)]}
    kept = {(r.first, r.end) for r in rounds if r.index in done}
    manifest.shards = [entry for entry in manifest.shards if (entry.first_row, entry.end_row) in kept]
    return done


def next_shard_number(manifest: Manifest) -> int:
    """Shard names are never reused: one past the highest listed."""
    numbers = [int(entry.file[len("part-"):-len(".parquet")]) for entry in manifest.shards]
    return max(numbers, default=-1) + 1


def shard_entry(path: Path | StorePath, round_: Round, rows: int) -> ShardEntry:
    """A published shard as the manifest records it: its round's files as its range, its size, and its SHA-256 where
    reading it back costs no download (as the local engine's)."""
    size = size_of(path)
    digest = file_sha256(path) if readable_locally(path) else ""  # type: ignore[arg-type]
    return ShardEntry(path.name, round_.first, round_.end, rows, 0, digest, bytes=size)


def how_far(job: EncodeJob, layout: DirectoryLayout, manifest: Manifest | None) -> str:
    """How far a stopped run got, from the manifest, and how to go on."""
    from sbert_cli.words import plural

    if manifest is None or not manifest.shards:
        return "nothing was published; run the same command again once the cluster is back"
    rounds = len(plan_rounds(job.input.files, int(manifest.options.get("round_bytes") or round_bytes())))
    done = len({(entry.first_row, entry.end_row) for entry in manifest.shards})
    rows = sum(entry.rows for entry in manifest.shards)
    return (
        f"{done} of {rounds} rounds ({plural(rows, 'row')}) are published in {layout.data}; "
        "run the same command with --resume once the cluster is back to finish the rest"
    )
