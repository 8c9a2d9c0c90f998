"""A BERT forward pass for the CPU on oneDNN's pre-packed weights, with bias and GELU fused into the GEMMs."""

from __future__ import annotations

from collections.abc import Mapping
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


def fused_bert_supported(config: dict[str, Any], dtype: Any) -> bool:
    """Whether `config` is a plain BERT encoder this module can run, and oneDNN can multiply `dtype` here."""
    import torch

    plain = (
        config.get("model_type") == "bert"
        and config.get("position_embedding_type", "absolute") == "absolute"
        and config.get("hidden_act") in _ACTIVATIONS
        and not config.get("is_decoder", False)
    )
    ops = hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    if not (plain and ops and torch.backends.mkldnn.is_available()):
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


class FusedBert:
    """A BERT encoder stack laid out once for inference, from a checkpoint's weights (no transformers model built).

    Weights are cast and re-ordered into oneDNN's blocked layout once, at load, instead of on every call;
    bias and GELU run as GEMM post-ops. Attention is PyTorch's SDPA; a batch without padding gets no mask,
    which lets it take the unmasked kernel. With bf16, the residual stream and layer norms stay in fp32:
    that costs no measurable time on bert-base and keeps the vectors several times closer to fp32's.
    A weight the checkpoint lacks raises KeyError, and the caller falls back to transformers.
    """

    def __init__(self, weights: Mapping[str, Any], config: dict[str, Any], dtype: Any, rows_hint: int = 1024) -> None:
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
        self._weights = _Renamed(weights, prefix)
        self.dtype = dtype
        self.heads = int(config["num_attention_heads"])
        self.algorithm = _ACTIVATIONS[config["hidden_act"]]
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.rows_hint = rows_hint
        self.word = self._tensor("embeddings.word_embeddings.weight").to(dtype)
        self.position = self._tensor("embeddings.position_embeddings.weight").to(dtype)
        self.token_type = self._tensor("embeddings.token_type_embeddings.weight")[0].to(dtype)
        self.embedding_norm = self._norm("embeddings.LayerNorm")
        self.layers = [self._layer(f"encoder.layer.{index}.") for index in range(int(config["num_hidden_layers"]))]
        del self._weights  # the packed copies are all that is kept

    def _tensor(self, name: str) -> Any:
        return self._weights[name].detach()

    def _norm(self, name: str) -> _Norm:
        # Checkpoints converted from TensorFlow name a layer norm's parameters gamma and beta.
        weight = self._weights.get(f"{name}.weight", self._weights.get(f"{name}.gamma"))
        bias = self._weights.get(f"{name}.bias", self._weights.get(f"{name}.beta"))
        if weight is None or bias is None:
            raise KeyError(name)
        return _Norm(weight.detach().float(), bias.detach().float(), self.eps)

    def _packed(self, *names: str) -> tuple[Any, Any]:
        import torch

        matrix = torch.cat([self._tensor(f"{name}.weight") for name in names]).to(self.dtype).contiguous()
        bias = torch.cat([self._tensor(f"{name}.bias") for name in names]).to(self.dtype)
        return torch.ops.mkldnn._reorder_linear_weight(matrix, self.rows_hint), bias

    def _layer(self, prefix: str) -> _Layer:
        attention = f"{prefix}attention.self."
        return _Layer(
            qkv=self._packed(f"{attention}query", f"{attention}key", f"{attention}value"),
            attention_out=self._packed(f"{prefix}attention.output.dense"),
            attention_norm=self._norm(f"{prefix}attention.output.LayerNorm"),
            intermediate=self._packed(f"{prefix}intermediate.dense"),
            output=self._packed(f"{prefix}output.dense"),
            output_norm=self._norm(f"{prefix}output.LayerNorm"),
        )

    def __call__(self, input_ids: Any, mask: Any) -> Any:
        """Token states [batch, tokens, hidden] in fp32 for input ids and a 0/1 attention mask."""
        import torch
        import torch.nn.functional as F

        linear = torch.ops.mkldnn._linear_pointwise
        batch, length = input_ids.shape
        hidden = self.word[input_ids].float() + self.position[:length].float() + self.token_type.float()
        width = hidden.shape[-1]
        residual = _layer_norm(hidden, self.embedding_norm).reshape(batch * length, width)
        attend = None if bool(mask.all()) else mask.bool()[:, None, None, :]
        head_shape = (batch, length, 3, self.heads, width // self.heads)
        for layer in self.layers:
            qkv = linear(residual.to(self.dtype), *layer.qkv, "none", [], "").view(head_shape).permute(2, 0, 3, 1, 4)
            context = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attend)
            context = context.transpose(1, 2).reshape(batch * length, width)
            attended = linear(context, *layer.attention_out, "none", [], "")
            residual = _layer_norm(residual + attended.float(), layer.attention_norm)
            inner = linear(residual.to(self.dtype), *layer.intermediate, "gelu", [], self.algorithm)
            output = linear(inner, *layer.output, "none", [], "")
            residual = _layer_norm(residual + output.float(), layer.output_norm)
        return residual.view(batch, length, width)


class _Renamed:
    """The checkpoint's tensors under their names without `prefix` ("bert." in some checkpoints), read lazily."""

    def __init__(self, weights: Mapping[str, Any], prefix: str) -> None:
        self.weights = weights
        self.prefix = prefix

    def __getitem__(self, name: str) -> Any:
        return self.weights[self.prefix + name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.weights.get(self.prefix + name, default)


def _layer_norm(hidden: Any, norm: _Norm) -> Any:
    import torch.nn.functional as F

    return F.layer_norm(hidden, (hidden.shape[-1],), norm.weight, norm.bias, norm.eps)
