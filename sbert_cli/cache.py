"""The vector cache: an SQLite file mapping a text and everything that shapes its vector to that float32 vector."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sbert_cli.errors import CacheError, SbertError, UsageError
from sbert_cli.io.storage import is_url
from sbert_cli.io.writers import file_digest
from sbert_cli.model.derived import DERIVED_FOLDERS
from sbert_cli.model.description import MODEL_FILE_PATTERNS

FORMAT = "sbert-vector-cache"
VERSION = "1"
_LOOKUP_CHUNK = 30_000  # under SQLite's limit on bound parameters; a default window is one query
BUSY_SECONDS = 600  # how long a run waits on another run's write to the cache before it gives up

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sbert_cache (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS profiles (
    id INTEGER PRIMARY KEY, digest TEXT UNIQUE NOT NULL, model TEXT NOT NULL, description TEXT NOT NULL,
    created REAL NOT NULL, used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS vectors (
    key BLOB PRIMARY KEY, profile INTEGER NOT NULL, n_tokens INTEGER NOT NULL, vector BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Profile:
    """One model with the options that change its vectors; every cached vector belongs to one."""

    id: int
    digest: bytes


@dataclass(frozen=True)
class ProfileSummary:
    """What `sbert cache info` shows of one profile."""

    model: str
    description: dict[str, Any]
    vectors: int
    bytes: int
    used: float


class CacheFile:
    """The SQLite file and its format: opened (or created) in WAL mode, refused untouched when it is not an sbert
    cache, each write one transaction, and every SQLite failure one line naming the file."""

    def __init__(self, path: str) -> None:
        self.path = path
        if is_url(path):
            raise UsageError(f"{path}: --cache is a local SQLite file, which a bucket cannot hold; pass a local path, e.g. --cache vectors.sqlite")
        if Path(path).is_dir():
            raise CacheError(f"{path}: is a directory; --cache takes a file, e.g. --cache vectors.sqlite")
        problem = place_problem(path)
        if problem is not None:
            raise problem
        self.lock = threading.Lock()
        with self.errors("open"):
            self.db = sqlite3.connect(path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False)
            if self._check_format():
                return
            self._use_wal()
            with self.transaction():
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self.db.execute(statement)
                self.db.executemany("INSERT OR IGNORE INTO sbert_cache VALUES (?, ?)", [("format", FORMAT), ("version", VERSION)])

    def _use_wal(self) -> None:
        """Switch a new cache to WAL. SQLite refuses the switch at once ("database is locked"), without waiting out
        the busy timeout, while another connection is in the file: two runs creating one cache together meet that,
        so the switch is tried again for as long as that timeout. Once one run has switched, the others' switch is
        a no-op."""
        deadline = time.monotonic() + BUSY_SECONDS
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.01)

    def _check_format(self) -> bool:
        """True for an sbert cache; False for a new, empty database; anything else is refused untouched."""
        try:
            tables = {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            rows = dict(self.db.execute("SELECT name, value FROM sbert_cache").fetchall()) if "sbert_cache" in tables else {}
        except sqlite3.DatabaseError as exc:
            raise CacheError(f"{self.path}: not an sbert cache, or damaged ({exc}); pass another --cache file (it was not changed)") from None
        if not tables:
            return False
        if rows.get("format") != FORMAT:
            raise CacheError(f"{self.path}: not an sbert cache; pass another --cache file (it was not changed)")
        if rows.get("version") != VERSION:
            raise CacheError(f"{self.path}: an sbert cache of version {rows.get('version')}, this sbert reads {VERSION}; pass another --cache file")
        return True

    @contextmanager
    def errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            problem = place_problem(self.path)  # e.g. the directory was made read-only during the run
            if problem is not None:
                raise problem from None
            if "disk is full" in str(exc):
                raise CacheError(f"{self.path}: cannot {action} the cache ({exc}); free space on its disk and rerun") from None
            raise CacheError(f"{self.path}: cannot {action} the cache ({exc}); move it aside and rerun to start a new one") from None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def size_bytes(self) -> int:
        return sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))

    def close(self) -> None:
        with self.lock:
            self.db.close()


def place_problem(path: str) -> SbertError | None:
    """Why a cache cannot be kept at `path` when the place, not the file, is at fault; None when it can. SQLite
    says only 'unable to open database file' for all of these, and moving the file aside would not help."""
    file = Path(path)
    if not file.parent.is_dir():
        return UsageError(f"{path}: directory '{file.parent}' does not exist; create it, or pass a --cache path in an existing directory")
    # WAL mode keeps two files beside the cache (-wal, -shm): even an existing cache needs a writable directory.
    if not os.access(file.parent, os.W_OK | os.X_OK):
        return CacheError(f"{path}: directory '{file.parent}' is not writable; pass a --cache path in a writable directory")
    if file.exists() and not os.access(file, os.R_OK | os.W_OK):
        return CacheError(f"{path}: the file is not readable and writable by this user; change its permissions, or pass another --cache path")
    return None


class Profiles:
    """The profiles in a cache file: a model directory's fingerprint (each file's hash kept while its size and
    mtime hold) with the options that change a vector, and the keys of texts under a profile."""

    def __init__(self, file: CacheFile) -> None:
        self.file = file

    def profile(self, model: str, directory: Path, description: dict[str, Any]) -> Profile:
        """The profile of a model directory (its files' fingerprint) with the options that change a vector."""
        file, db = self.file, self.file.db
        with file.lock, file.errors("read"):
            fingerprint = self._fingerprint(directory)
            text = json.dumps({**description, "fingerprint": fingerprint}, sort_keys=True)
            digest = hashlib.sha256(text.encode()).digest()
            now = time.time()
            with file.transaction():
                db.execute(
                    "INSERT INTO profiles (digest, model, description, created, used) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(digest) DO UPDATE SET used = excluded.used",
                    (digest.hex(), model, text, now, now),
                )
            (profile_id,) = db.execute("SELECT id FROM profiles WHERE digest = ?", (digest.hex(),)).fetchone()
        return Profile(profile_id, digest)

    def _fingerprint(self, directory: Path) -> str:
        """SHA-256 over every weight, config and vocabulary file (not what sbert derived from them: model.derived)."""
        found = {path for pattern in MODEL_FILE_PATTERNS for path in directory.rglob(pattern) if path.is_file()}
        files = sorted(path for path in found if not set(DERIVED_FOLDERS) & set(path.relative_to(directory).parts))
        digest = hashlib.sha256()
        for path in files:
            digest.update(str(path.relative_to(directory)).encode() + b"\0" + self._file_sha256(path).encode())
        return digest.hexdigest()

    def _file_sha256(self, path: Path) -> str:
        stat = path.stat()
        real = str(path.resolve())
        db = self.file.db
        row = db.execute("SELECT size, mtime_ns, sha256 FROM files WHERE path = ?", (real,)).fetchone()
        if row is not None and row[0] == stat.st_size and row[1] == stat.st_mtime_ns:
            return str(row[2])
        sha256 = file_digest(path)[0]
        with self.file.transaction():
            db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (real, stat.st_size, stat.st_mtime_ns, sha256))
        return sha256

    @staticmethod
    def keys(profile: Profile, texts: Sequence[str]) -> list[bytes]:
        return [hashlib.sha256(profile.digest + b"\0" + text.encode("utf-8", "surrogatepass")).digest() for text in texts]


class VectorCache:
    """Vectors by SHA-256(profile, text): lookup and store for a run, summary and prune for `sbert cache`.

    WAL mode: readers never wait; a writer waits for the other writer. Every write is one transaction, so a
    run killed at any moment leaves the file as it was before or after a whole window; nothing half-written
    is ever read back.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.file = CacheFile(path)
        self.profiles = Profiles(self.file)

    def profile(self, model: str, directory: Path, description: dict[str, Any]) -> Profile:
        return self.profiles.profile(model, directory, description)

    def lookup(self, profile: Profile, texts: Sequence[str], dim: int) -> dict[int, tuple[np.ndarray, int]]:
        """The cached (vector, token count) of each text found, by its index in `texts`."""
        keys = self.profiles.keys(profile, texts)
        position = {key: index for index, key in enumerate(keys)}
        found: dict[int, tuple[np.ndarray, int]] = {}
        with self.file.lock, self.file.errors("read"):
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start : start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT key, n_tokens, vector FROM vectors WHERE key IN ({marks})"
                for key, n_tokens, blob in self.file.db.execute(query, chunk):
                    vector = np.frombuffer(blob, dtype=np.float32)
                    if vector.shape == (dim,):
                        found[position[key]] = (vector, int(n_tokens))
        return found

    def store(self, profile: Profile, texts: Sequence[str], vectors: np.ndarray, n_tokens: Sequence[int]) -> None:
        """Add freshly encoded vectors in one transaction (a concurrent run's copy of the same key is kept)."""
        rows = [
            (key, profile.id, int(count), np.ascontiguousarray(vector, dtype=np.float32).tobytes())
            for key, vector, count in zip(self.profiles.keys(profile, texts), vectors, n_tokens)
        ]
        with self.file.lock, self.file.errors("write"), self.file.transaction():
            self.file.db.executemany("INSERT OR IGNORE INTO vectors VALUES (?, ?, ?, ?)", rows)

    def summary(self) -> list[ProfileSummary]:
        query = (
            "SELECT p.model, p.description, p.used, count(v.key), coalesce(sum(length(v.vector)), 0) "
            "FROM profiles p LEFT JOIN vectors v ON v.profile = p.id GROUP BY p.id ORDER BY p.model, p.used"
        )
        with self.file.lock, self.file.errors("read"):
            rows = self.file.db.execute(query).fetchall()
        return [ProfileSummary(model, json.loads(text), count, size, used) for model, text, used, count, size in rows]

    def prune(self, keep_models: Sequence[str], unused_days: float | None) -> int:
        """Remove the vectors of profiles not kept; returns how many vectors went. The file shrinks too."""
        cutoff = time.time() - unused_days * 86400 if unused_days is not None else None
        db = self.file.db
        with self.file.lock, self.file.errors("write"):
            profiles = db.execute("SELECT id, model, used FROM profiles").fetchall()
            doomed = [
                pid for pid, model, used in profiles
                if (keep_models and model not in keep_models) or (cutoff is not None and used < cutoff)
            ]
            with self.file.transaction():
                removed = sum(db.execute("DELETE FROM vectors WHERE profile = ?", (pid,)).rowcount for pid in doomed)
                db.executemany("DELETE FROM profiles WHERE id = ?", [(pid,) for pid in doomed])
            db.execute("VACUUM")
        return removed

    def size_bytes(self) -> int:
        return self.file.size_bytes()

    def close(self) -> None:
        self.file.close()


