"""A BERT forward pass for the CPU on oneDNN's pre-packed weights, with bias and GELU fused into the GEMMs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# oneDNN's post-op name and algorithm for each activation BERT configs use; others fall back to transformers.
_ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


@dataclass(frozen=True)
class _Norm:
    weight: Any
    bias: Any
    eps: float


@dataclass(frozen=True)
class _Layer:
    qkv: tuple[Any, Any]  # query, key and value as one packed GEMM: one pass over the activations, not three
    attention_out: tuple[Any, Any]
    attention_norm: _Norm
    intermediate: tuple[Any, Any]
    output: tuple[Any, Any]
    output_norm: _Norm


def fused_bert_supported(model: Any, dtype: Any) -> bool:
    """Whether `model` is a plain BERT encoder this module can run, and oneDNN can multiply `dtype` here."""
    import torch

    config = model.config
    plain = (
        getattr(config, "model_type", "") == "bert"
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and config.hidden_act in _ACTIVATIONS
        and not getattr(config, "is_decoder", False)
    )
    ops = hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    if not (plain and ops and torch.backends.mkldnn.is_available()):
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


class FusedBert:
    """The encoder stack of a transformers BertModel, re-laid out once for inference.

    Weights are cast and re-ordered into oneDNN's blocked layout once, at load, instead of on every call;
    bias and GELU run as GEMM post-ops. Attention is PyTorch's SDPA; a batch without padding gets no mask,
    which lets it take the unmasked kernel. With bf16, the residual stream and layer norms stay in fp32:
    that costs no measurable time on bert-base and keeps the vectors several times closer to fp32's.
    """

    def __init__(self, model: Any, dtype: Any, rows_hint: int = 1024) -> None:
        embeddings = model.embeddings
        config = model.config
        self.dtype = dtype
        self.heads = config.num_attention_heads
        self.algorithm = _ACTIVATIONS[config.hidden_act]
        self.word = embeddings.word_embeddings.weight.detach().to(dtype)
        self.position = embeddings.position_embeddings.weight.detach().to(dtype)
        self.token_type = embeddings.token_type_embeddings.weight.detach()[0].to(dtype)
        self.embedding_norm = self._norm(embeddings.LayerNorm)
        self.layers = [self._layer(layer, rows_hint) for layer in model.encoder.layer]

    def _norm(self, norm: Any) -> _Norm:
        return _Norm(norm.weight.detach().float(), norm.bias.detach().float(), float(norm.eps))

    def _packed(self, weight: Any, bias: Any, rows_hint: int) -> tuple[Any, Any]:
        import torch

        matrix = weight.detach().to(self.dtype).contiguous()
        return torch.ops.mkldnn._reorder_linear_weight(matrix, rows_hint), bias.detach().to(self.dtype)

    def _layer(self, layer: Any, rows_hint: int) -> _Layer:
        import torch

        attention = layer.attention.self
        qkv_weight = torch.cat([attention.query.weight, attention.key.weight, attention.value.weight])
        qkv_bias = torch.cat([attention.query.bias, attention.key.bias, attention.value.bias])
        return _Layer(
            qkv=self._packed(qkv_weight, qkv_bias, rows_hint),
            attention_out=self._packed(layer.attention.output.dense.weight, layer.attention.output.dense.bias, rows_hint),
            attention_norm=self._norm(layer.attention.output.LayerNorm),
            intermediate=self._packed(layer.intermediate.dense.weight, layer.intermediate.dense.bias, rows_hint),
            output=self._packed(layer.output.dense.weight, layer.output.dense.bias, rows_hint),
            output_norm=self._norm(layer.output.LayerNorm),
        )

    def __call__(self, input_ids: Any, mask: Any) -> Any:
        """Token states [batch, tokens, hidden] in self.dtype for input ids and a 0/1 attention mask."""
        import torch
        import torch.nn.functional as F

        linear = torch.ops.mkldnn._linear_pointwise
        batch, length = input_ids.shape
        # The residual stream and the layer norms stay in fp32; only the GEMMs and attention run in self.dtype.
        hidden = (self.word[input_ids].float() + self.position[:length].float() + self.token_type.float())
        width = hidden.shape[-1]
        residual = self._norm_apply(hidden, self.embedding_norm).reshape(batch * length, width)
        attend = None if bool(mask.all()) else mask.bool()[:, None, None, :]
        head_shape = (batch, length, 3, self.heads, width // self.heads)
        for layer in self.layers:
            states = residual.to(self.dtype)
            qkv = linear(states, *layer.qkv, "none", [], "").view(head_shape).permute(2, 0, 3, 1, 4)
            context = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attend)
            context = context.transpose(1, 2).reshape(batch * length, width)
            attended = linear(context, *layer.attention_out, "none", [], "")
            residual = self._norm_apply(residual + attended.float(), layer.attention_norm)
            inner = linear(residual.to(self.dtype), *layer.intermediate, "gelu", [], self.algorithm)
            output = linear(inner, *layer.output, "none", [], "")
            residual = self._norm_apply(residual + output.float(), layer.output_norm)
        return residual.view(batch, length, width)

    @staticmethod
    def _norm_apply(hidden: Any, norm: _Norm) -> Any:
        import torch.nn.functional as F

        return F.layer_norm(hidden, (hidden.shape[-1],), norm.weight, norm.bias, norm.eps)
