"""The CPU backend: BERT's matrix products on oneDNN's pre-packed weights, with bias and GELU fused into the GEMMs."""

from __future__ import annotations

from typing import Any

from sbert_cli.backends.base import Target
from sbert_cli.backends.bert import bert_from_checkpoint, bert_supported
from sbert_cli.backends.feeding import ForwardBackend
from sbert_cli.model.description import ModelDescription

# oneDNN (and ideep above it) keep a compiled kernel per distinct GEMM row count, up to 1024 of them: a long
# run kept meeting new counts, one per batch shape. Padding row counts to a multiple of 64 leaves 45 counts
# on the bench's 11,000 rows (110 unpadded) and at most 128 at the default batch options, which all
# together hold under 100 MiB for bert-base; the padding rows cost 1.6% of the work on the bench corpus.
ROW_GRANULE = 64


def fused_bert_supported(config: dict[str, Any], dtype: Any) -> bool:
    """Whether `config` is a plain BERT encoder and oneDNN can multiply `dtype` on this CPU."""
    import torch

    ops = hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    if not (bert_supported(config) and ops and torch.backends.mkldnn.is_available()):
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


class OneDnnLinears:
    """Weights cast and re-ordered into oneDNN's blocked layout once, at load, instead of on every call; bias and
    GELU run as GEMM post-ops. With bf16, the residual stream and layer norms stay in fp32: that costs no
    measurable time on bert-base and keeps the vectors several times closer to fp32's."""

    row_granule = ROW_GRANULE
    fused_qkv = True

    def __init__(self, dtype: Any, rows_hint: int = 1024) -> None:
        import torch

        self.compute_dtype = dtype
        self.residual_dtype = torch.float32
        self.rows_hint = rows_hint

    def place(self, tensor: Any, dtype: Any) -> Any:
        return tensor.to(dtype, copy=True)

    def pack(self, matrix: Any, bias: Any) -> tuple[Any, Any]:
        import torch

        weight = matrix.to(self.compute_dtype).contiguous()
        return torch.ops.mkldnn._reorder_linear_weight(weight, self.rows_hint), bias.to(self.compute_dtype, copy=True)

    def __call__(self, rows: Any, packed: tuple[Any, Any], gelu: str | None) -> Any:
        import torch

        weight, bias = packed
        post = ("gelu", gelu) if gelu is not None else ("none", "")
        return torch.ops.mkldnn._linear_pointwise(rows.to(self.compute_dtype), weight, bias, post[0], [], post[1])


class OneDnnBert(ForwardBackend):
    """A plain BERT checkpoint on a CPU's oneDNN kernels, no transformers model built."""

    name = "onednn-bert"

    @classmethod
    def load(cls, model: ModelDescription, target: Target) -> OneDnnBert | None:
        if not fused_bert_supported(model.config, target.dtype):
            return None
        bert = bert_from_checkpoint(model, OneDnnLinears(target.dtype))
        return None if bert is None else cls(bert, target)
