"""The CUDA backend: BERT's weights read straight onto the GPU in their precision, and the feeding that keeps it busy."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sbert_cli.bert import Bert

if TYPE_CHECKING:
    from sbert_cli.encoder import Forward, Tokenized


class TorchLinears:
    """cuBLAS products through torch: weights copied from the checkpoint to the device one tensor at a time, cast
    to the run's precision on the way (no model built on the host first); the residual stream stays in that
    precision too, as transformers' own fp16 BERT keeps it (a row that overflows is re-run at fp32)."""

    row_granule = 1

    def __init__(self, dtype: Any, device: Any) -> None:
        self.compute_dtype = self.residual_dtype = dtype
        self.device = device

    def place(self, tensor: Any, dtype: Any) -> Any:
        return tensor.to(device=self.device, dtype=dtype, copy=True)

    def pack(self, matrix: Any, bias: Any) -> tuple[Any, Any]:
        return self.place(matrix, self.compute_dtype).contiguous(), self.place(bias, self.compute_dtype)

    def __call__(self, rows: Any, packed: tuple[Any, Any], gelu: str | None) -> Any:
        import torch.nn.functional as F

        product = F.linear(rows.to(self.compute_dtype), *packed)
        return product if gelu is None else F.gelu(product, approximate=gelu)


def device_bert(weights: Mapping[str, Any], config: dict[str, Any], dtype: Any, device: Any) -> Bert:
    """The BERT stack on `device` (a GPU; the tests run it on the CPU) in `dtype`."""
    return Bert(weights, config, TorchLinears(dtype, device))


class DeviceFeeder:
    """Runs a window's batches on a GPU without making it wait on the host.

    Per batch: ids padded by numpy indexing, staged through pinned buffers that are reused, copied on a side
    stream while the previous batch computes, the forward pass and pooling queued on the device, vectors left
    there. Nothing in the loop waits for the GPU, so the host runs ahead; the window's vectors come back in one
    copy at its end and are put in input order on the host. On a CPU device (the tests) the same code runs
    on CPU tensors.
    """

    def __init__(self, forward: Forward, device: Any, pad_id: int, pooling: str, normalize: bool) -> None:
        self.forward = forward
        self.device = device
        self.pad_id = pad_id
        self.pooling = pooling
        self.normalize = normalize
        self.staging = Staging(device)

    def run(self, tokens: Tokenized, batches: Sequence[np.ndarray], out: np.ndarray, after_batch: Callable[[int], None]) -> int:
        """Encoder.embed_batches on the device: out[rows] for each batch's rows; how many batches ran."""
        import torch

        from sbert_cli.encoder import run_batches

        total = sum(len(rows) for rows in batches)
        filled = 0
        with torch.inference_mode():
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
        """One batch queued on the device: its pooled (and normalised) float32 vectors, in the batch's order."""
        import torch

        from sbert_cli.encoder import sentence_vectors

        ids, lengths = tokens.padded(rows, self.pad_id)
        count, longest = ids.shape
        staged = self.staging.to_device(np.concatenate([ids.reshape(-1), lengths.astype(np.int32)]))
        input_ids = staged[: count * longest].view(count, longest).long()
        # Whether the batch has padding is known on the host: asking the device would wait for it.
        padded = int(lengths.min()) < longest
        mask = torch.arange(longest, device=self.device) < staged[count * longest :, None] if padded else None
        return sentence_vectors(self.forward(input_ids, mask), mask, self.pooling, self.normalize)


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
