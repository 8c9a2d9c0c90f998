"""A checkpoint's tensors by name, read one at a time, never through pickled code."""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sbert_cli.errors import ModelError

PICKLE_REFUSED = (
    "pytorch_model.bin holds pickled code objects besides tensors, and sbert loads weights only; "
    "get model.safetensors from a source you trust"
)


def checkpoint_file(source: Path) -> Path | None:
    """The one file holding the checkpoint's weights: model.safetensors, else pytorch_model.bin (None: sharded or
    unusual checkpoints, which transformers loads)."""
    return next((source / name for name in ("model.safetensors", "pytorch_model.bin") if (source / name).is_file()), None)


def read_weights(source: Path) -> Any:
    """The checkpoint's tensors by name, without building a transformers model (None: let transformers load it)."""
    import torch

    checkpoint = checkpoint_file(source)
    if checkpoint is None:
        return None
    if checkpoint.suffix == ".safetensors":
        return _Safetensors(checkpoint)
    try:
        try:
            return torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # saved in torch's legacy format, which cannot be memory-mapped
            return torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelError(f"{source}: {PICKLE_REFUSED}") from None


class _Safetensors(Mapping[str, Any]):
    """A safetensors file's tensors, each read when asked for: packing copies the weights one at a time,
    so the checkpoint and its packed copy are never both in memory."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self._file = safe_open(str(path), framework="pt")
        self._names = list(self._file.keys())

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        return self._file.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)
