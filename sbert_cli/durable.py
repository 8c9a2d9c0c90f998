"""Durability on a local disk: a file's data and a folder's names synced, and a filled folder published whole."""

from __future__ import annotations

import os
from pathlib import Path


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
