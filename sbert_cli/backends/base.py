"""What every backend is and shares: the interface, what it is loaded for, and the out-of-memory contract."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from sbert_cli.backends.pooling import Pooling
from sbert_cli.model.description import ModelDescription
from sbert_cli.model.modules import HeadLayer
from sbert_cli.model.tokens import Tokenized
from sbert_cli.plan import BatchShape


class Forward(Protocol):
    """A forward pass: token states [batch, tokens, hidden] for ids and a boolean mask (None: no padding)."""

    def __call__(self, input_ids: Any, mask: Any | None) -> Any: ...


class Backend(Protocol):
    """A model's forward pass on one device, fed a window's batches and pooled into vectors."""

    name: str  # for --verbose and the tests: which backend runs the model
    batch_shape: BatchShape | None  # the rows and tokens a batch its kernels run fastest at; None: the device's defaults

    def embed_batches(self, tokens: Tokenized, batches: Sequence[np.ndarray], out: np.ndarray, after_batch: Callable[[int], None]) -> int:
        """Write each batch's vectors into out[rows] for its rows (indices into `tokens`), calling after_batch(rows)
        after each batch. Returns how many batches ran: fewer than all when batches[returned] ran out of device
        memory (see run_batches), and by then nothing of that try is left on the device."""
        ...


@dataclass(frozen=True)
class Target:
    """What a backend is loaded for: the device and precision, the tokenizer's pad id, the pooling and the head
    after it (Dense, Normalize, truncation), which every backend applies through pooling.sentence_vectors.

    Plain values only: a backend that runs without torch (OpenVINO's) never imports it. Torch's device, dtype and
    head are made on first use; that first use also sets torch's CPU threads to the run's.
    """

    device: str  # "cpu", "cuda", "cuda:1"
    precision: str  # fp32, bf16, fp16 or int8
    pad_id: int
    pooling: Pooling
    head_layers: tuple[HeadLayer, ...] = ()
    threads: int = 1  # on a CPU: the threads its forward pass may use

    @property
    def device_kind(self) -> str:
        """The kind of device (backends.BACKENDS is keyed on it): cpu or cuda."""
        return self.device.partition(":")[0]

    @cached_property
    def torch_device(self) -> Any:
        import torch

        if self.device_kind == "cpu":
            torch.set_num_threads(self.threads)
        return torch.device(self.device)

    @cached_property
    def dtype(self) -> Any:
        """The precision as a torch dtype."""
        import torch

        self.torch_device  # noqa: B018 -- torch's threads are set before any backend computes
        # int8: the products are the quantized model's (backends.openvino_int8); what reaches pooling is float32.
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}[self.precision]

    @cached_property
    def head(self) -> Callable[[Any], Any]:
        """The layers after pooling on the device: pooled float32 vectors in, the run's vectors out."""
        from sbert_cli.backends.heads import Head

        return Head(self.head_layers, self.torch_device)


# A backend's loader: the backend for this model on this target, or None when it does not run this model
# (the next loader in line for the device is tried). Each backend module has one.
BackendLoader = Callable[[ModelDescription, Target], "Backend | None"]


def run_batches(batches: Sequence[np.ndarray], run_batch: Callable[[np.ndarray], None], after_batch: Callable[[int], None]) -> int:
    """Run batches in order until one runs out of device memory; return how many ran.

    The retry is the caller's, after this has returned: the failed try's tensors, which the exception's
    traceback holds, are freed by then and the CUDA cache is emptied, so the smaller batches that follow get
    all of the device's memory. (Retrying inside the except block kept them allocated.)
    """
    import torch

    for index, rows in enumerate(batches):
        try:
            run_batch(rows)
        except torch.cuda.OutOfMemoryError:
            pass  # handled after the except block, once the exception and the frames it holds are gone
        else:
            after_batch(len(rows))
            continue
        release_device_memory()
        return index
    return len(batches)


def release_device_memory() -> None:
    """Free what a failed try left: unreachable tensors now, then the CUDA allocator's cached blocks."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
