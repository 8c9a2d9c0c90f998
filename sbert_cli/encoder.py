"""The encoder: a described model's tokenizer and its device's backend, assembled once a text must be encoded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sbert_cli.backends import load_backend
from sbert_cli.backends.base import Backend, Target
from sbert_cli.backends.pooling import Pooling
from sbert_cli.errors import ModelError
from sbert_cli.choices import DEFAULT_MODEL
from sbert_cli.model.options import ModelOptions
from sbert_cli.model.description import ModelDescription, ModelInfo, describe_model
from sbert_cli.model.device import available_cores
from sbert_cli.model.tokenizer import Tokenizer
from sbert_cli.model.tokens import Tokenized
from sbert_cli.plan import BatchShape


class Encoder(Protocol):
    """What the run needs from a model; tests use a fake with the same shape."""

    info: ModelInfo
    batch_shape: BatchShape | None  # the rows and tokens a batch its backend runs fastest at; None: the device's defaults

    def tokenize(self, texts: list[str]) -> Tokenized: ...

    def embed_batches(self, tokens: Tokenized, batches: Sequence[np.ndarray], out: np.ndarray, after_batch: Callable[[int], None]) -> int:
        """Backend.embed_batches: out[rows] for each batch's rows; how many batches ran before one ran out of memory."""
        ...

    def at_fp32(self) -> Encoder:
        """The same model at fp32 (itself when it already is): for rows whose vectors overflowed."""
        ...


@dataclass(frozen=True)
class ModelHandle:
    """A model described without torch, loaded by load() only when a text must be encoded."""

    description: ModelDescription

    @property
    def info(self) -> ModelInfo:
        return self.description.info

    @property
    def directory(self) -> Path:
        return self.description.directory

    def load(self) -> Encoder:
        return TransformerEncoder(self.description)


def open_model(options: ModelOptions) -> ModelHandle:
    """Find the model and decide its device, precision and length; every failure is a one-line SbertError."""
    return ModelHandle(describe_model(options))


def load_encoder(
    model: str = DEFAULT_MODEL,
    device: str = "auto",
    precision: str = "auto",
    max_length: int | None = None,
    normalize: bool = False,
    *,
    prompt: str | None = None,
    prompt_name: str | None = None,
    truncate_dim: int | None = None,
    backend: str = "auto",
) -> Encoder:
    """Find, load and configure a model in one call (the Python API; the CLI loads only when it must)."""
    options = ModelOptions(model, device, precision, max_length, normalize, prompt=prompt, prompt_name=prompt_name, truncate_dim=truncate_dim, backend=backend)
    return open_model(options).load()


class TransformerEncoder:
    """A model's tokenizer and the backend that runs it on its device (backends.BACKENDS chooses which)."""

    def __init__(self, model: ModelDescription, tokenizer: Tokenizer | None = None) -> None:
        self.model = model
        self.info = model.info
        self.texts_to_tokens = tokenizer or Tokenizer(model)
        self.pad_id = self.texts_to_tokens.pad_id
        skip = 0 if model.layout.include_prompt else self.texts_to_tokens.prompt_length
        threads = model.threads or available_cores()
        self.target = Target(model.info.device, model.info.precision, self.pad_id, Pooling(model.info.pooling, skip), model.head, threads)
        self.backend: Backend = load_backend(model, self.target)
        # A quantized backend's quality-gate figures describe its vectors: they go to the output's metadata.
        self.info = replace(model.info, quality=getattr(self.backend, "quality", ()))
        self.batch_shape = self.backend.batch_shape
        self._fp32: TransformerEncoder | None = None

    @property
    def tokenizer(self) -> Any:
        """The model's transformers tokenizer."""
        return self.texts_to_tokens.tokenizer

    def tokenize(self, texts: list[str]) -> Tokenized:
        return self.texts_to_tokens(texts)

    def embed_batches(self, tokens: Tokenized, batches: Sequence[np.ndarray], out: np.ndarray, after_batch: Callable[[int], None]) -> int:
        return self.backend.embed_batches(tokens, batches, out, after_batch)

    def embed(self, ids: list[list[int]]) -> np.ndarray:
        """Vectors of one batch of token id lists, in their order (a convenience for the Python API and tests)."""
        tokens = Tokenized.from_lists(ids)
        out = np.zeros((len(ids), self.info.dim), dtype=np.float32)
        if self.embed_batches(tokens, [np.arange(len(ids))], out, lambda rows: None) < 1:
            raise ModelError(f"out of device memory on a batch of {len(ids)} texts")
        return out

    def at_fp32(self) -> Encoder:
        if self.info.precision == "fp32":
            return self
        if self._fp32 is None:
            model = replace(self.model, info=replace(self.info, precision="fp32"))
            self._fp32 = TransformerEncoder(model, tokenizer=self.texts_to_tokens)
        return self._fp32
