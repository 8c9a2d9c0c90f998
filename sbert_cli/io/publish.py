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

import fnmatch
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sbert_cli.durable import sync_directory, sync_file
from sbert_cli.io.storage import is_url, location, upload

TEMPORARY_MARK = ".sbert-tmp-"
ANY_TEMPORARY = f".*{TEMPORARY_MARK}*"  # the glob of every temporary in a folder that holds only one output's files


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


def remove_leftovers(places: Iterable[tuple[str, str]]) -> list[Path]:
    """The one clean-up of what killed runs left: the temporary files (and staging folders) matching each (local
    folder, glob). Call it only while holding the output's lock or lease, so nothing removed belongs to a live run."""
    removed = []
    for folder, pattern in places:
        try:
            names = sorted(entry.name for entry in os.scandir(folder) if fnmatch.fnmatchcase(entry.name, pattern))
        except FileNotFoundError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                discard(path)
            removed.append(Path(path))
    return removed
