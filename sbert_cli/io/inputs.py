"""What `encode` reads: a file, a directory (recursively, Hive `key=value` folders included) or a glob, on disk or in
an object store, as the sorted list of its data files in one format; what identifies that set for --resume; and
its rows as one stream numbered across the files, read a file at a time.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from sbert_cli.errors import UsageError
from sbert_cli.io.formats import extension_formats, format_names, named_extensions
from sbert_cli.io.rows import BadRow, Extent, Fields
from sbert_cli.io.storage import StorePath, is_url, store_errors

GLOB_CHARS = ("*", "?", "[")
_EDGE_BYTES = 1 << 20  # a single local input is also identified by a hash of its first and last MiB


@dataclass(frozen=True)
class InputFile:
    """One file of the input: where (a path as found, or an s3:// URL), its size and modification time."""

    path: str
    size: int
    mtime_ns: int


def detect_format(path: str, explicit: str | None) -> str:
    """The input format: --format if given (a name in io.formats.INPUT_FORMATS, which the CLI offers), else the
    file extension; stdin is sniffed later."""
    if explicit is not None:
        return explicit
    if path == "-":
        return "auto"
    suffix = PurePosixPath(path).suffix.lower()
    extensions = extension_formats()
    if suffix in extensions:
        return extensions[suffix]
    raise UsageError(f"{path}: cannot tell the format from the extension '{suffix}'; pass --format {'|'.join(format_names())}")


def is_glob(pattern: str) -> bool:
    return any(char in pattern for char in GLOB_CHARS)


def expand_input(pattern: str, explicit: str | None) -> tuple[tuple[InputFile, ...], str, str | None]:
    """INPUT's files in sorted-path order, their one format, and the root their ids are named from (None for a file
    named exactly, whose ids are its row numbers).

    A file named exactly is read whatever its name. In a directory, prefix or glob, hidden files and folders (a
    name starting with '.' or '_': _SUCCESS, _committed_*, _metadata, .part-0.crc) and *.crc are skipped, and so is
    a file without a data extension unless --format says how to read every file.
    """
    found, root = _store_files(pattern) if is_url(pattern) else _local_files(pattern)
    if root is None:
        return found, detect_format(found[0].path, explicit), None
    extensions = extension_formats()
    kept = [file for file in found if explicit is not None or PurePosixPath(file.path).suffix.lower() in extensions]
    if not kept:
        raise UsageError(f"{pattern}: holds no {named_extensions()} files; check the path, or pass --format to read other names")
    if explicit is not None:
        return tuple(kept), explicit, root
    formats = {detect_format(file.path, None): file.path for file in kept}
    if len(formats) > 1:
        shown = ", ".join(f"{path} is {fmt}" for fmt, path in sorted(formats.items()))
        raise UsageError(f"{pattern}: holds files of more than one format ({shown}); pass a glob that selects one, e.g. '{pattern.rstrip('/')}/**/*.jsonl'")
    return tuple(kept), next(iter(formats)), root


def _is_data(relative: tuple[str, ...]) -> bool:
    return not any(part.startswith((".", "_")) for part in relative) and not relative[-1].lower().endswith(".crc")


def _path_key(path: str) -> tuple[str, ...]:
    """Sorted-path order, folder by folder: 'a/x' before 'a-b/x'."""
    return PurePosixPath(path.replace(os.sep, "/")).parts


def _local_files(pattern: str) -> tuple[tuple[InputFile, ...], str | None]:
    """The files, and the root of their ids: the directory, or a glob's folders before its first wildcard."""
    path = Path(pattern)
    if path.is_file():
        return (_local_file(pattern),), None
    root = pattern
    if path.is_dir():
        names = []
        for folder, folders, files in os.walk(path):
            folders[:] = [name for name in folders if _is_data((name,))]  # hidden folders are not entered
            names += [os.path.join(folder, name) for name in files if _is_data((name,))]
    elif is_glob(pattern):
        root = _literal_base(pattern)
        names = [name for name in glob.glob(pattern, recursive=True) if os.path.isfile(name) and _is_data(_relative(name, root))]
    else:
        raise UsageError(f"{pattern}: no such file; check the path")
    if not names:
        raise UsageError(f"{pattern}: no files {'in this directory' if path.is_dir() else 'match'}; check the path")
    return tuple(_local_file(name) for name in sorted(names, key=_path_key)), root


def _local_file(name: str) -> InputFile:
    stat = os.stat(name)
    return InputFile(name, stat.st_size, stat.st_mtime_ns)


def _literal_base(pattern: str) -> str:
    """The folders of a glob before its first wildcard: what is listed to match it."""
    parts = PurePosixPath(pattern.replace(os.sep, "/")).parts
    literal = parts[: next(index for index, part in enumerate(parts) if is_glob(part))]
    return str(PurePosixPath(*literal)) if literal else "."


def _relative(name: str, base: str) -> tuple[str, ...]:
    return PurePosixPath(os.path.relpath(name, base).replace(os.sep, "/")).parts


def _store_files(pattern: str) -> tuple[tuple[InputFile, ...], str | None]:
    """A key, every object under a prefix, or the objects a glob matches ('*' within a folder, '**' across)."""
    from pyarrow.fs import FileSelector, FileType

    root = StorePath.parse(pattern)
    wildcard = is_glob(root.key)
    if not wildcard:
        info = root.info()
        if info.type == FileType.File:
            return (_store_file(info),), None
    base = StorePath(PurePosixPath(_literal_base(str(root.posix)))) if wildcard else root
    with store_errors(pattern, UsageError):
        infos = root.fs.get_file_info(FileSelector(str(base.posix), recursive=True, allow_not_found=True))
    files = []
    for info in infos:
        relative = PurePosixPath(info.path).relative_to(base.posix).parts
        if info.type == FileType.File and _is_data(relative) and (not wildcard or _glob_match(root.posix.parts, PurePosixPath(info.path).parts)):
            files.append(_store_file(info))
    if not files and (wildcard or not infos):  # a prefix of hidden objects only is told apart by expand_input
        root.require_bucket()
        what = "no objects match this pattern" if wildcard else "no such key, and no objects under this prefix"
        raise UsageError(f"{pattern}: {what} in bucket '{root.bucket}'; check the path")
    return tuple(sorted(files, key=lambda file: _path_key(file.path))), str(base)


def _store_file(info: Any) -> InputFile:
    return InputFile("s3://" + info.path, info.size, info.mtime_ns or 0)


def _glob_match(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Glob semantics on '/'-separated parts: '*' stays within a part, '**' matches any number of parts."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_match(pattern[1:], parts[index:]) for index in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _glob_match(pattern[1:], parts[1:])


def reads(pattern: str, path: str) -> bool:
    """Whether a later run of this INPUT might read a file at `path`: it lies in its directory or prefix, or
    matches its glob, and is not hidden there (whatever its extension: --format reads every name)."""
    if pattern == "-" or is_url(pattern) != is_url(path):
        return False
    if is_url(pattern):
        root, target = StorePath.parse(pattern).posix, StorePath.parse(path).posix
    else:
        root, target = PurePosixPath(os.path.abspath(pattern)), PurePosixPath(os.path.abspath(path))
    if is_glob(str(root)):
        base = PurePosixPath(_literal_base(str(root)))
        inside = _glob_match(root.parts, target.parts) and target.is_relative_to(base)
    else:
        base = root
        inside = target.is_relative_to(root) and target != root
    return inside and _is_data(target.relative_to(base).parts)


def relative_name(root: str, path: str) -> str:
    """A file's path below the input's root, '/'-separated: 'day=1/part-0.jsonl'."""
    if is_url(path):
        return str(StorePath.parse(path).posix.relative_to(StorePath.parse(root).posix))
    return "/".join(_relative(path, root))


def row_id(root: str | None, path: str, row: int) -> Any:
    """The id of a file's data row `row` (0-based in that file) without --id-column, on every engine: the row
    number for a file named alone; '<path below the root>:<row>' for the files of a directory, prefix or glob,
    which two files of the same name in different partitions cannot share."""
    return row if root is None else f"{relative_name(root, path)}:{row}"


def chain_files(
    files: tuple[InputFile, ...], read: Callable[[InputFile, Extent], Iterator[Fields | BadRow]], extent: Extent, root: str | None
) -> Iterator[Fields | BadRow]:
    """Every file's rows in turn, numbered on across files; a file is opened once the one before is done.

    `root`: without an id column, each row's id is row_id's, from its row in its own file (None: an id column
    names ids). Progress counts the bytes of the files done plus the share read of the current one. An empty file
    (an empty partition) holds no rows.
    """
    if len(files) == 1:
        yield from (_named(item, root, files[0].path, 0) for item in read(files[0], extent))
        return
    done = [0]
    current: list[Any] = [Extent(), 0]
    extent.total, extent.unit = sum(file.size for file in files), "bytes"
    extent.position = lambda: done[0] + _share(*current)
    offset = 0
    for file in files:
        if file.size == 0:
            continue
        current[:] = [Extent(), file.size]
        count = 0
        for item in read(file, current[0]):
            count = item.row + 1
            yield _named(item, root, file.path, offset)
        offset += count
        done[0] += file.size
        current[:] = [Extent(), 0]


def _named(item: Fields | BadRow, root: str | None, path: str, offset: int) -> Fields | BadRow:
    """A file's row renumbered across the input, with its id from its own file when there is no id column."""
    if root is None:
        return replace(item, row=item.row + offset) if offset else item
    return replace(item, row=item.row + offset, id=row_id(root, path, item.row))


def _share(inner: Extent, size: int) -> int:
    now = inner.now()
    return int(size * now / inner.total) if now is not None and inner.total else 0


def identity(files: tuple[InputFile, ...]) -> dict[str, Any]:
    """What the manifest records of the input: one local file by its resolved path, size, mtime and a hash of its
    edges (as before sets existed); a set by each file's path, size and mtime (a store's LastModified)."""
    if len(files) == 1 and not is_url(files[0].path):
        return _edge_identity(files[0].path)
    return {"files": [{"path": _resolved(file.path), "size": file.size, "mtime_ns": file.mtime_ns} for file in files]}


def _resolved(path: str) -> str:
    return path if is_url(path) else str(Path(path).resolve())


def _edge_identity(path: str) -> dict[str, Any]:
    import hashlib

    stat = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        digest.update(stream.read(_EDGE_BYTES))
        if stat.st_size > _EDGE_BYTES:
            stream.seek(max(_EDGE_BYTES, stat.st_size - _EDGE_BYTES))
            digest.update(stream.read(_EDGE_BYTES))
    return {"path": _resolved(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "edge_sha256": digest.hexdigest()}


def describe_change(earlier: dict[str, Any], now: dict[str, Any]) -> str | None:
    """How the input differs from the manifest's, or None: the fields of one file, else the files added, removed
    or changed, each named."""
    if "files" not in earlier and "files" not in now:
        changed = [key for key, value in now.items() if earlier.get(key) != value]
        return f"({', '.join(changed)} changed)" if changed else None
    before = {entry["path"]: entry for entry in earlier.get("files", [earlier])}
    after = {entry["path"]: entry for entry in now.get("files", [now])}
    notes = [f"{path} added" for path in after if path not in before]
    notes += [f"{path} removed" for path in before if path not in after]
    notes += [
        f"{path} changed ({', '.join(key for key in ('size', 'mtime_ns') if before[path].get(key) != after[path].get(key))})"
        for path in after if path in before and any(before[path].get(key) != after[path].get(key) for key in ("size", "mtime_ns"))
    ]
    if not notes:
        return None
    return "(" + "; ".join(notes[:3]) + (f"; and {len(notes) - 3} more" if len(notes) > 3 else "") + ")"
