"""A model's Rust tokenizer saved once beside the model, with the facts sbert reads from transformers' wrapper, so
that later runs load it without importing transformers."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from sbert_cli.model.derived import SAVED_TOKENIZERS, derived_roots, find_derived, write_derived
from sbert_cli.model.description import ModelDescription

# Raised whenever what is saved changes, so that a folder an older sbert wrote is never read.
FORMAT_VERSION = 1
FACTS_FILE = "facts.json"
TOKENIZER_FILE = "tokenizer.json"
# The files transformers builds a tokenizer from, in the model's transformer directory (weights never matter).
TOKENIZER_INPUTS = ("*.json", "*.txt", "*.model")


@dataclass(frozen=True)
class TokenizerFacts:
    """What sbert reads from a transformers tokenizer besides its Rust core."""

    pad_id: int
    special_ids: tuple[int, ...]
    left_truncation: bool
    prefix: int | None  # special tokens before a single text ([CLS] x [SEP]: 1); None for an unusual layout
    suffix: int | None  # and after it


def saved_options(model: ModelDescription) -> dict[str, Any]:
    """What the saved tokenizer depends on: the versions that built it and every file it could be built from (name,
    size and modification time). Any change makes a new folder."""
    directory = model.layout.transformer_dir
    files = sorted({path for pattern in TOKENIZER_INPUTS for path in directory.glob(pattern) if path.is_file()})
    inputs: dict[str, list[int]] = {}
    for path in files:
        stat = path.stat()
        inputs[path.name] = [stat.st_size, stat.st_mtime_ns]
    return {"format": FORMAT_VERSION, "transformers": _version("transformers"), "tokenizers": _version("tokenizers"), "files": inputs}


def first_run(model: ModelDescription) -> bool:
    """Whether nothing is saved for the model's files as they are now: its first run prepares it (without importing
    transformers or torch, so it can be told at once)."""
    return find_derived(_roots(model), saved_options(model)) is None


def load_saved_tokenizer(model: ModelDescription) -> tuple[Any, TokenizerFacts] | None:
    """The saved Rust tokenizer and its facts, or None where there is none for the model's files as they are now (or
    it cannot be read: transformers then builds the tokenizer again)."""
    folder = find_derived(_roots(model), saved_options(model))
    if folder is None:
        return None
    import tokenizers

    try:
        facts = json.loads((folder / FACTS_FILE).read_text(encoding="utf-8"))
        facts["special_ids"] = tuple(facts["special_ids"])
        return tokenizers.Tokenizer.from_file(str(folder / TOKENIZER_FILE)), TokenizerFacts(**facts)
    except Exception:  # a damaged or foreign folder: the tokenizer is built as on a first run
        return None


def save_tokenizer(model: ModelDescription, backend: Any, facts: TokenizerFacts) -> Path | None:
    """Save the Rust tokenizer and its facts for later runs; None where no place is writable."""
    def write(staging: Path) -> bool:
        backend.save(str(staging / TOKENIZER_FILE))
        (staging / FACTS_FILE).write_text(json.dumps(asdict(facts), indent=1) + "\n", encoding="utf-8")
        return True

    try:
        return write_derived(_roots(model), saved_options(model), write, "saving the model's tokenizer, so later runs start without transformers")
    except Exception:  # a full disk, or a tokenizer with parts in Python that cannot be saved: runs build it as before
        return None


def _roots(model: ModelDescription) -> list[Path]:
    return derived_roots(model.layout.transformer_dir, SAVED_TOKENIZERS, "tokenizers")


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None
