"""A directory output's record of itself: its layout, the manifest of finished shards, and what makes --resume safe."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sbert_cli.errors import InputDataError, UsageError
from sbert_cli.io.inputs import InputFile, describe_change, identity
from sbert_cli.io.paths import DirectoryLayout
from sbert_cli.durable import sync_directory
from sbert_cli.io.publish import TEMPORARY_MARK, write_text
from sbert_cli.io.readers import STDIN
from sbert_cli.io.storage import readable_locally, size_of
from sbert_cli.io.writers import NOTHING_WRITTEN, file_digest, output_errors
from sbert_cli.words import plural

if TYPE_CHECKING:
    from sbert_cli.io.storage import StorePath

MANIFEST_VERSION = 2
_SHARD_NAME = re.compile(r"part-\d{5}\.parquet")
_FIRST_LAYOUT_FILES = ("manifest.json", ".sbert.lock")  # sbert 0.1 kept these in the directory; moved on first use
_FIRST_LAYOUT_REJECTS = re.compile(r"part-\d{5}\.rejects\.jsonl")


def create_layout(layout: DirectoryLayout) -> list[Path]:
    """The output directory and its state folder, made when missing (each synced in its parent, so that it
    survives a power cut with what is published into it); a failure is one line naming it. Returns the folders
    it made on a disk (a store has no folders to make)."""
    if not readable_locally(layout.data):
        return []
    made = []
    with output_errors(str(layout.data)):
        for folder in (layout.data, layout.state, layout.rejects):
            missing = [parent for parent in (folder, *folder.parents) if not parent.exists()]  # type: ignore[union-attr]
            folder.mkdir(parents=True, exist_ok=True)
            for new in reversed(missing):
                sync_directory(new.parent)  # type: ignore[arg-type]
            made += reversed(missing)  # type: ignore[arg-type]
    return made


def remove_unused_layout(layout: DirectoryLayout, made: list[Path]) -> None:
    """The local folders `create_layout` made, removed again when the run published nothing into them (no
    manifest); call it with the lock still held, so its file can go too."""
    if not made or os.path.exists(layout.manifest):  # type: ignore[arg-type]
        return
    try:
        os.remove(layout.lock)  # type: ignore[arg-type]
        for folder in reversed(made):
            os.rmdir(folder)
    except OSError:
        return  # not empty: something else is there; leave it


@dataclass
class ShardEntry:
    """One finished shard: input rows [first_row, end_row), how many were written and rejected, its checksum."""

    file: str
    first_row: int
    end_row: int
    rows: int
    rejected: int
    sha256: str
    rejects_file: str | None = None  # relative to the state folder
    bytes: int | None = None  # a store's shard is checked by its size: reading it back to hash it would download it


@dataclass
class Manifest:
    input: dict[str, Any]
    options: dict[str, Any]
    shards: list[ShardEntry] = field(default_factory=list)
    complete: bool = False
    version: int = MANIFEST_VERSION
    quantization: dict[str, Any] | None = None  # int8/uint8 ranges, fixed by the first shard for every later one


def identify_input(files: tuple[InputFile, ...]) -> dict[str, Any]:
    """Enough to tell that a resumed run reads the same input (inputs.identity), without hashing all of it."""
    return identity(files) if files else {"path": STDIN, "size": -1, "mtime_ns": -1, "edge_sha256": ""}


def file_sha256(path: Path) -> str:
    return file_digest(path)[0]


def load_manifest(path: Path | StorePath) -> Manifest | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Manifest(
            input=data["input"],
            options=data["options"],
            shards=[ShardEntry(**entry) for entry in data["shards"]],
            complete=bool(data.get("complete", False)),
            version=int(data.get("version", 1)),
            quantization=data.get("quantization"),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputDataError(f"{path}: unreadable manifest ({exc}); write into an empty directory instead") from None


def save_manifest(layout: DirectoryLayout, manifest: Manifest, on_failure: str = NOTHING_WRITTEN) -> None:
    """Published whole and durable: a reader (or a crash) sees the old manifest or the new one, never half of one.
    Call it only once every shard it lists is published (and so durable)."""
    text = json.dumps(asdict(manifest), indent=2, ensure_ascii=False) + "\n"
    with output_errors(str(layout.manifest), on_failure):
        write_text(str(layout.manifest), text)


def prepare_directory(
    layout: DirectoryLayout, earlier: Manifest | None, identity: dict[str, Any], options: dict[str, Any], resume: bool, overwrite: bool
) -> Manifest:
    """The manifest to write under, with the lock held: a fresh one, or the earlier run's once it matches this run.

    A directory with nothing to keep (missing, empty, or an earlier run that finished no shard) starts a fresh
    run, with or without --resume, so the same cron line is right every time. Finished shards of an earlier
    run are resumed (--resume), removed (--overwrite) or refused; files sbert did not write are never touched.
    """
    finished = sorted(layout.data.glob("part-*.parquet"))
    if finished and earlier is None:
        raise UsageError(f"{layout.data}: holds Parquet files that no sbert manifest describes; choose an empty directory")
    if earlier is not None and (overwrite or not earlier.shards):
        _remove_earlier_run(layout)
        earlier = None
    if earlier is None:
        manifest = Manifest(input=identity, options=options)
        save_manifest(layout, manifest)
        return manifest
    if not resume:
        count = len(earlier.shards)
        raise UsageError(
            f"{layout.data}: holds {plural(count, 'finished shard')} of an earlier run; "
            "pass --resume to finish it, or --overwrite to start over"
        )
    _check_same_run(layout, earlier, identity, options)
    intact = [entry for entry in earlier.shards if _shard_is_intact(layout, entry)]
    if earlier.complete and len(intact) == len(earlier.shards):
        return earlier
    earlier.shards, earlier.complete = intact, False
    save_manifest(layout, earlier)
    return earlier


def refuse_foreign_files(layout: DirectoryLayout) -> None:
    """An existing -o DIRECTORY must be empty or an sbert output: shards, and temporary files of sbert's own."""
    if not layout.data.is_dir():
        return
    first_layout = (layout.data / "manifest.json").is_file()  # sbert 0.1 kept its state in the directory
    foreign = sorted(
        path.name for path in layout.data.iterdir()
        if not (
            _SHARD_NAME.fullmatch(path.name)
            or TEMPORARY_MARK in path.name
            or (first_layout and (path.name in _FIRST_LAYOUT_FILES or _FIRST_LAYOUT_REJECTS.fullmatch(path.name)))
        )
    )
    if foreign:
        shown = ", ".join(repr(name) for name in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UsageError(f"{layout.data}: holds files sbert did not write ({shown}); pass an empty or new directory to -o")


def _remove_earlier_run(layout: DirectoryLayout) -> None:
    """What an earlier run wrote, and only that: its shards (the directory holds nothing else, and its manifest says
    sbert wrote it), their rejects, then the manifest."""
    with output_errors(str(layout.data)):
        for path in [*layout.data.glob("part-*.parquet"), *layout.rejects.glob("part-*.rejects.jsonl")]:
            path.unlink()
        layout.manifest.unlink(missing_ok=True)


def _check_same_run(layout: DirectoryLayout, earlier: Manifest, identity: dict[str, Any], options: dict[str, Any]) -> None:
    if identity.get("path") == STDIN:
        raise UsageError("--resume needs the input as a file: stdin cannot be checked against the manifest")
    change = describe_change(earlier.input, identity)
    if change and "files" in identity:
        raise UsageError(
            f"{layout.data}: the input files differ from the manifest's {change}; "
            "resume only with the same input files, or pass --overwrite to start over with these"
        )
    if change:
        raise UsageError(
            f"{layout.data}: the input differs from the manifest's {change}; "
            "resume only with the same input file, or pass --overwrite to start over with this one"
        )
    differing = sorted(key for key in set(options) | set(earlier.options) if options.get(key) != earlier.options.get(key))
    if differing:
        shown = ", ".join(f"{key}: {earlier.options.get(key)!r} -> {options.get(key)!r}" for key in differing)
        raise UsageError(f"{layout.data}: options differ from the manifest's ({shown}); resume with the same options")


def _shard_is_intact(layout: DirectoryLayout, entry: ShardEntry) -> bool:
    """The shard is there as it was published: its size (a store object is whole or absent, never torn) and, where
    reading it costs no download, its SHA-256 (a disk's file can be truncated or overwritten in place)."""
    path = layout.data / entry.file
    size = size_of(path)
    if size is None or (entry.bytes is not None and size != entry.bytes):
        return False
    if readable_locally(path):
        if file_sha256(path) != entry.sha256:  # type: ignore[arg-type]
            return False
    elif entry.bytes is None:
        return False
    return entry.rejects_file is None or (layout.state / entry.rejects_file).is_file()


def migrate_first_layout(layout: DirectoryLayout) -> None:
    """sbert 0.1 kept manifest.json, rejects and its lock inside the directory: move them to the state folder (it
    wrote to local disks only)."""
    if not readable_locally(layout.data):
        return
    old = layout.data / "manifest.json"
    manifest = load_manifest(old)
    if manifest is None or layout.manifest.exists():
        return
    with output_errors(str(layout.state)):
        for entry in manifest.shards:
            if entry.rejects_file is not None:
                moved = layout.rejects / Path(entry.rejects_file).name
                if (layout.data / entry.rejects_file).exists():
                    os.replace(layout.data / entry.rejects_file, moved)
                entry.rejects_file = str(moved.relative_to(layout.state))
        manifest.version = MANIFEST_VERSION
        save_manifest(layout, manifest)
        os.remove(old)
        if os.path.exists(first_lock := layout.data / ".sbert.lock"):  # type: ignore[operator]
            os.remove(first_lock)
