"""Publishing: how every file sbert writes for a user reaches its final name whole and durable, and how a killed run's
temporaries are cleaned up.

A file is written under a temporary name in its own folder (a store output's: a local spool folder), then
published: its data is synced to disk, it is renamed over the final name, and the folder is synced so the rename
itself survives a power cut (SQLite's and LevelDB's rule; a rename alone is atomic against a killed process only).
In an object store, the upload's completion is the publication: the object appears whole or not at all. A record
that points at a file (a directory's manifest) is written only after the file is published, so after any crash it
points at durable data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sbert_cli.io.storage import is_url, location, upload

TEMPORARY_MARK = ".sbert-tmp-"


def temporary_path(final: str, folder: Path | None = None) -> str:
    """A hidden name beside `final` (or in `folder`), unique to this process; a store output's is in its spool."""
    target = location(final)
    if folder is None and is_url(final):
        folder = spool_dir(final)
        folder.mkdir(exist_ok=True)
    folder = folder or Path(target.parent)  # type: ignore[arg-type]
    return str(folder / f".{target.name}{TEMPORARY_MARK}{os.getpid()}")


def spool_dir(output: str) -> Path:
    """Where a store output's files are written before their upload: a local folder per output (made and removed by
    the run that holds the output), so the next run on that output knows what a killed run left there."""
    digest = hashlib.sha256(str(location(output)).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"sbert-spool-{digest}"


def temporary_pattern(name: str) -> str:
    """The glob of every run's temporary files for a file called `name`: what a later run may remove."""
    return f".{name}{TEMPORARY_MARK}*"


def sync_file(path: str | Path) -> None:
    """Flush a closed file's data to the disk (a read-only descriptor is enough for fsync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_directory(folder: str | Path) -> None:
    """Make the names in `folder` durable: a rename into it is on disk once this returns."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temporary: str, final: str) -> None:
    """Make a finished temporary file the output `final`: synced, renamed, its folder synced; or uploaded whole."""
    if is_url(final):
        upload(temporary, location(final))  # type: ignore[arg-type]
        os.remove(temporary)
        return
    sync_file(temporary)
    os.replace(temporary, final)
    sync_directory(os.path.dirname(os.path.abspath(final)))


def discard(temporary: str) -> None:
    """Remove a temporary that will not be published (a failed or stopped run)."""
    try:
        os.remove(temporary)
    except FileNotFoundError:
        pass


@contextmanager
def staged(final: str, folder: Path | None = None) -> Iterator[str]:
    """A temporary path to write `final` at; published when the block ends, removed if it raises."""
    temporary = temporary_path(final, folder)
    try:
        yield temporary
    except BaseException:
        discard(temporary)
        raise
    try:
        publish(temporary, final)
    except BaseException:
        discard(temporary)
        raise


def write_text(final: str, text: str) -> None:
    """A small file (a manifest, a sidecar) written whole: staged and published on a disk, one PUT in a store."""
    if is_url(final):
        location(final).write_text(text)  # type: ignore[union-attr]
        return
    with staged(final) as temporary:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(text)


def publish_folder(staging: Path, final: Path) -> bool:
    """A folder filled at `staging` (beside `final`) becomes `final` whole: every file synced, the folder renamed,
    the parent synced. False when another process published `final` first (its folder is as good as ours)."""
    for root, _, files in os.walk(staging):
        for name in files:
            sync_file(Path(root) / name)
        sync_directory(root)
    try:
        staging.rename(final)
    except OSError:
        if final.is_dir():
            return False
        raise
    sync_directory(final.parent)
    return True


def remove_leftovers(folders: Iterable[Path], pattern: str = f".*{TEMPORARY_MARK}*") -> list[Path]:
    """The one clean-up of what killed runs left: temporary files (and staging folders) matching `pattern` in
    `folders`. Call it only while holding the output's lock or lease, so nothing removed belongs to a live run."""
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(pattern)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed
