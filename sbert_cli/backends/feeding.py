"""How a window's batches reach a device: one after another on a CPU, staged ahead of the compute on CUDA."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sbert_cli.backends.base import Forward, Target, run_batches
from sbert_cli.backends.pooling import sentence_vectors
from sbert_cli.model.tokens import Tokenized
from sbert_cli.plan import BatchShape


class ForwardBackend:
    """A forward pass as a Backend: on a CPU each batch padded, run and pooled in turn (the plain path); on
    CUDA through DeviceFeeder, which keeps the GPU fed. The BERT and transformers backends are this, each
    with its own forward pass."""

    name = "forward"
    batch_shape: BatchShape | None = None

    def __init__(self, forward: Forward, target: Target) -> None:
        self.forward = forward
        self.target = target
        self._feeder = DeviceFeeder(forward, target) if target.device_kind == "cuda" else None

    def embed_batches(self, tokens: Tokenized, batches: Sequence[np.ndarray], out: np.ndarray, after_batch: Callable[[int], None]) -> int:
        if self._feeder is not None:
            return self._feeder.run(tokens, batches, out, after_batch)

        def run_batch(rows: np.ndarray) -> None:
            out[rows] = self._embed_batch(tokens, rows)

        return run_batches(batches, run_batch, after_batch)

    def _embed_batch(self, tokens: Tokenized, rows: np.ndarray) -> np.ndarray:
        """The plain path: one batch padded, run and pooled, its vectors back in numpy."""
        import torch

        target = self.target
        ids, lengths = tokens.padded(rows, target.pad_id)
        mask = None if int(lengths.min()) == ids.shape[1] else torch.from_numpy(np.arange(ids.shape[1]) < lengths[:, None])
        with torch.inference_mode():
            hidden = self.forward(torch.from_numpy(ids).long(), mask)
            return sentence_vectors(hidden, mask, target.pooling, target.head).numpy()


class DeviceFeeder:
    """Runs a window's batches on a GPU without making it wait on the host.

    Per batch: ids padded by numpy indexing, staged through pinned buffers that are reused, copied on a side
    stream while the previous batch computes, the forward pass and pooling queued on the device, vectors left
    there. Nothing in the loop waits for the GPU, so the host runs ahead; the window's vectors come back in one
    copy at its end and are put in input order on the host. On a CPU device (the tests) the same code runs
    on CPU tensors.
    """

    def __init__(self, forward: Forward, target: Target) -> None:
        self.forward = forward
        self.target = target
        self.device = target.torch_device
        self.staging = Staging(target.torch_device)

    def run(self, tokens: Tokenized, batches: Sequence[np.ndarray], out: np.ndarray, after_batch: Callable[[int], None]) -> int:
        """Encoder.embed_batches on the device: out[rows] for each batch's rows; how many batches ran."""
        import torch

        total = sum(len(rows) for rows in batches)
        filled = 0
        with torch.inference_mode(), shape_free_attention():
            vectors = torch.empty((total, out.shape[1]), dtype=torch.float32, device=self.device)

            def run_batch(rows: np.ndarray) -> None:
                nonlocal filled
                vectors[filled : filled + len(rows)] = self._pooled(tokens, rows)
                filled += len(rows)

            ran = run_batches(batches, run_batch, after_batch)
            if filled:
                out[np.concatenate(batches[:ran])] = vectors[:filled].cpu().numpy()  # the window's one copy back
        return ran

    def _pooled(self, tokens: Tokenized, rows: np.ndarray) -> Any:
        """One batch queued on the device: its pooled float32 vectors through the head, in the batch's order."""
        import torch

        ids, lengths = tokens.padded(rows, self.target.pad_id)
        count, longest = ids.shape
        staged = self.staging.to_device(np.concatenate([ids.reshape(-1), lengths.astype(np.int32)]))
        input_ids = staged[: count * longest].view(count, longest).long()
        # Whether the batch has padding is known on the host: asking the device would wait for it.
        padded = int(lengths.min()) < longest
        mask = torch.arange(longest, device=self.device) < staged[count * longest :, None] if padded else None
        return sentence_vectors(self.forward(input_ids, mask), mask, self.target.pooling, self.target.head)


def shape_free_attention() -> Any:
    """Attention by SDPA kernels that need nothing set up per shape: flash for batches without padding,
    memory-efficient for those with, math where neither runs. cuDNN's attention, which PyTorch prefers on Hopper,
    builds and caches a plan for each (rows, tokens) it meets; a window's batches are tens of new shapes, and on an
    H200 a 300,000-row run's forward stage took 18.7 s; at the rate its batches ran once their shapes were known,
    it would have taken 6.7 s."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class Staging:
    """Host arrays onto the device. On CUDA through two pinned buffers used in turn and a copy stream: filling one
    buffer overlaps the other's copy, the copy overlaps the compute queued before it, and a buffer is refilled
    only once its last copy is done. Elsewhere (the tests' CPU device) a plain tensor."""

    def __init__(self, device: Any) -> None:
        import torch

        self.device = device
        self.cuda = device.type == "cuda"
        self._buffers: list[Any] = [None, None]
        self._copied: list[Any] = [None, None]
        self._turn = 0
        self._stream = torch.cuda.Stream(device) if self.cuda else None

    def to_device(self, values: np.ndarray) -> Any:
        """`values` (int32) as a tensor on the device, ordered before the work queued after this call."""
        import torch

        if not self.cuda:
            return torch.from_numpy(values)
        turn, self._turn = self._turn, 1 - self._turn
        if self._copied[turn] is not None:
            self._copied[turn].synchronize()  # the copy that last read this buffer has finished
        buffer = self._buffers[turn]
        if buffer is None or buffer.numel() < values.size:
            size = max(values.size, 2 * (buffer.numel() if buffer is not None else 0))
            buffer = self._buffers[turn] = torch.empty(size, dtype=torch.int32, pin_memory=True)
        host = buffer[: values.size]
        host.numpy()[:] = values
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._stream):
            staged = host.to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._stream)
        self._copied[turn] = copied
        compute.wait_event(copied)  # the batch's kernels start once its ids are there
        staged.record_stream(compute)  # and its memory is not reused before they are done with it
        return staged
