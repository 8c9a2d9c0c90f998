"""The CUDA backend: BERT's weights read straight onto the GPU in their precision, its products on cuBLAS.

Fed by feeding.DeviceFeeder, which stages each batch ahead of the compute.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sbert_cli.backends.base import Target
from sbert_cli.backends.bert import Bert, TorchLinears, bert_from_checkpoint, bert_supported
from sbert_cli.backends.feeding import ForwardBackend
from sbert_cli.model.description import ModelDescription


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
        bert = bert_from_checkpoint(model, TorchLinears(target.dtype, target.torch_device))
        return None if bert is None else cls(bert, target)
