"""Files sbert derives once from a model's own (its OpenVINO conversion, its saved tokenizer): one folder per key,
kept beside the model or in the user's cache, each published whole and durable."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbert_cli.durable import publish_folder

# The folders in a model's transformer directory where sbert keeps what it derives from the model's files: never part
# of what identifies the model (the --cache fingerprint skips them).
OPENVINO_CONVERSIONS = "sbert-openvino"
OPENVINO_INT8 = "sbert-openvino-int8"  # --precision int8: the conversion quantized, with its quality gate
SAVED_TOKENIZERS = "sbert-tokenizer"
DERIVED_FOLDERS = (OPENVINO_CONVERSIONS, OPENVINO_INT8, SAVED_TOKENIZERS)


OPTIONS_FILE = "options.json"  # what a folder was derived under; written last, so its presence marks a complete folder


def derived_key(options: dict[str, Any]) -> str:
    """The folder name for what was derived under these options: any change to them makes a new folder."""
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:20]


def user_cache(name: str) -> Path:
    """sbert's folder `name` in the user's cache directory."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sbert" / name


def derived_roots(model_dir: Path, folder: str, cache_name: str) -> list[Path]:
    """Where derived folders are kept, in order: beside the model, then the user's cache directory."""
    return [model_dir / folder, user_cache(cache_name)]


def find_derived(roots: list[Path], options: dict[str, Any]) -> Path | None:
    """The first root's complete folder for these options, or None."""
    key = derived_key(options)
    for root in roots:
        if (root / key / OPTIONS_FILE).is_file():
            return root / key
    return None


@dataclass
class OneTimeSteps:
    """Where a one-time step (a model's conversion, its saved tokenizer) says what it does while it does it, and how
    long such steps took, so that a run's rows/s counts encoding alone. A run sets `announce`; None says nothing."""

    announce: Callable[[str], None] | None = None
    seconds: float = 0.0

    @contextmanager
    def step(self, what: str, folder: Path) -> Iterator[None]:
        if self.announce is not None:
            self.announce(f"sbert: {what}: a one-time step for this model, kept in {folder} for later runs")
        started = time.perf_counter()
        try:
            with _spinner(what if self.announce is not None else None):
                yield
        finally:
            spent = time.perf_counter() - started
            self.seconds += spent
            if self.announce is not None:
                self.announce(f"sbert: {what}: done in {spent:.1f} s")


ONE_TIME = OneTimeSteps()


@contextmanager
def _spinner(what: str | None) -> Iterator[None]:
    """A spinner with the seconds so far on a terminal's stderr while a one-time step runs (rich's status line,
    gone when it ends); nothing where stderr is a file or pipe, or the run is quiet (`what` None)."""
    if what is None or not sys.stderr.isatty():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(Text(f"once: {what.split(',')[0]}")):  # the step's name, without its why
        yield


def write_derived(roots: list[Path], options: dict[str, Any], write: Callable[[Path], bool], what: str) -> Path | None:
    """Make the folder for these options in the first writable root: `write` fills a temporary folder (False: nothing
    to keep), the options are recorded last, and the folder is renamed into place whole, so that a reader (or a
    concurrent run) never sees half of one. None where no root is writable or `write` kept nothing. `what` names the
    step for ONE_TIME's announcement."""
    key = derived_key(options)
    for root in roots:
        try:
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        except OSError:
            continue  # not writable: the next place
        final = root / key
        try:
            with ONE_TIME.step(what, final):
                kept = write(staging)
            if not kept:
                return None
            (staging / OPTIONS_FILE).write_text(json.dumps(options, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            if not publish_folder(staging, final) and not (final / OPTIONS_FILE).is_file():
                raise OSError(f"{final}: is in the way and not a complete folder")  # not a concurrent run that got there first
            return final
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return None
