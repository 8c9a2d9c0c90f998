"""The CUDA backend: BERT's weights read straight onto the GPU in their precision, its products on cuBLAS.

Fed by feeding.DeviceFeeder, which stages each batch ahead of the compute.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sbert_cli.backends.base import Target
from sbert_cli.backends.bert import Bert, bert_from_checkpoint, bert_supported
from sbert_cli.backends.feeding import ForwardBackend
from sbert_cli.model.description import ModelDescription


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


class CudaBert(ForwardBackend):
    """A plain BERT checkpoint on a GPU, no transformers model built."""

    name = "cuda-bert"

    @classmethod
    def load(cls, model: ModelDescription, target: Target) -> CudaBert | None:
        if not bert_supported(model.config):
            return None
        bert = bert_from_checkpoint(model, TorchLinears(target.dtype, target.device))
        return None if bert is None else cls(bert, target)
