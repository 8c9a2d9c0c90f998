"""BERT's encoder stack run from a checkpoint's weights alone (no transformers model), its matrix products left to a device."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sbert_cli.backends.weights import read_weights
from sbert_cli.model.description import ModelDescription

# The GELU variants BERT configs name, as torch and oneDNN call their approximations; other activations
# (and other architectures) run through transformers instead.
GELU_APPROXIMATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


class Linears(Protocol):
    """One device's matrix products: weights laid out once at load, multiplied with bias (and GELU) per batch."""

    compute_dtype: Any  # the dtype the products run in
    residual_dtype: Any  # the dtype of the residual stream, layer norms and the returned token states
    row_granule: int  # row counts are padded to a multiple of this before the products (1: never)
    fused_qkv: bool  # query, key and value as one product (False: three, the pattern OpenVINO fuses best)

    def place(self, tensor: Any, dtype: Any) -> Any:
        """A copy of `tensor` on the device in `dtype` that owns its memory (never a view of the checkpoint)."""
        ...

    def pack(self, matrix: Any, bias: Any) -> Any:
        """A weight matrix [out, in] and its bias, laid out for this device's products."""
        ...

    def __call__(self, rows: Any, packed: Any, gelu: str | None) -> Any:
        """rows [n, in] times the packed weights, plus bias, then GELU (`gelu` names its approximation) if asked."""
        ...


class TorchLinears:
    """Plain torch products on any device (cuBLAS on a GPU): weights copied from the checkpoint to the device one
    tensor at a time, cast to the run's precision on the way (no model built on the host first); the residual
    stream stays in that precision too, as transformers' own fp16 BERT keeps it (a row that overflows is re-run
    at fp32). The CUDA backend runs on these, and the OpenVINO backend traces its graph through them."""

    row_granule = 1

    def __init__(self, dtype: Any, device: Any, fused_qkv: bool = True) -> None:
        self.compute_dtype = self.residual_dtype = dtype
        self.device = device
        self.fused_qkv = fused_qkv

    def place(self, tensor: Any, dtype: Any) -> Any:
        return tensor.to(device=self.device, dtype=dtype, copy=True)

    def pack(self, matrix: Any, bias: Any) -> tuple[Any, Any]:
        return self.place(matrix, self.compute_dtype).contiguous(), self.place(bias, self.compute_dtype)

    def __call__(self, rows: Any, packed: tuple[Any, Any], gelu: str | None) -> Any:
        import torch.nn.functional as F

        product = F.linear(rows.to(self.compute_dtype), *packed)
        return product if gelu is None else F.gelu(product, approximate=gelu)


def bert_supported(config: dict[str, Any]) -> bool:
    """Whether `config` is a plain BERT encoder that Bert runs."""
    return (
        config.get("model_type") == "bert"
        and config.get("position_embedding_type", "absolute") == "absolute"
        and config.get("hidden_act") in GELU_APPROXIMATIONS
        and not config.get("is_decoder", False)
    )


def bert_from_checkpoint(model: ModelDescription, linears: Linears) -> Bert | None:
    """The BERT stack from the model's checkpoint on `linears`' device, or None where transformers knows the
    checkpoint better (sharded, or not the weights a BERT encoder has)."""
    import torch

    weights = read_weights(model.layout.transformer_dir)
    if weights is None:
        return None
    try:
        with torch.inference_mode():
            return Bert(weights, model.config, linears)
    except KeyError:
        return None


@dataclass(frozen=True)
class _Norm:
    weight: Any
    bias: Any
    eps: float


@dataclass(frozen=True)
class _Layer:
    qkv: tuple[Any, ...]  # query, key and value as one product (one pass over the activations), or three (Linears.fused_qkv)
    attention_out: Any
    attention_norm: _Norm
    intermediate: Any
    output: Any
    output_norm: _Norm


class Bert:
    """A BERT encoder laid out once for inference by a device's Linears.

    Attention is PyTorch's SDPA; a batch without padding gets no mask, which lets it take the unmasked
    (flash) kernel. A weight the checkpoint lacks raises KeyError, and the caller falls back to transformers.
    """

    def __init__(self, weights: Mapping[str, Any], config: dict[str, Any], linears: Linears) -> None:
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
        self._weights = _Renamed(weights, prefix)
        self.linears = linears
        self.heads = int(config["num_attention_heads"])
        self.gelu = GELU_APPROXIMATIONS[config["hidden_act"]]
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        dtype = linears.compute_dtype
        self.word = linears.place(self._tensor("embeddings.word_embeddings.weight"), dtype)
        self.position = linears.place(self._tensor("embeddings.position_embeddings.weight"), dtype)
        self.token_type = linears.place(self._tensor("embeddings.token_type_embeddings.weight")[0], dtype)
        self.embedding_norm = self._norm("embeddings.LayerNorm")
        self.layers = [self._layer(f"encoder.layer.{index}.") for index in range(int(config["num_hidden_layers"]))]
        del self._weights  # the placed copies are all that is kept

    def _tensor(self, name: str) -> Any:
        return self._weights[name].detach()

    def _norm(self, name: str) -> _Norm:
        # Checkpoints converted from TensorFlow name a layer norm's parameters gamma and beta.
        weight = self._weights.get(f"{name}.weight", self._weights.get(f"{name}.gamma"))
        bias = self._weights.get(f"{name}.bias", self._weights.get(f"{name}.beta"))
        if weight is None or bias is None:
            raise KeyError(name)
        dtype = self.linears.residual_dtype
        return _Norm(self.linears.place(weight.detach(), dtype), self.linears.place(bias.detach(), dtype), self.eps)

    def _packed(self, *names: str) -> Any:
        import torch

        matrix = torch.cat([self._tensor(f"{name}.weight") for name in names])
        bias = torch.cat([self._tensor(f"{name}.bias") for name in names])
        return self.linears.pack(matrix, bias)

    def _qkv(self, attention: str) -> tuple[Any, ...]:
        names = (f"{attention}query", f"{attention}key", f"{attention}value")
        return (self._packed(*names),) if self.linears.fused_qkv else tuple(self._packed(name) for name in names)

    def _layer(self, prefix: str) -> _Layer:
        attention = f"{prefix}attention.self."
        return _Layer(
            qkv=self._qkv(attention),
            attention_out=self._packed(f"{prefix}attention.output.dense"),
            attention_norm=self._norm(f"{prefix}attention.output.LayerNorm"),
            intermediate=self._packed(f"{prefix}intermediate.dense"),
            output=self._packed(f"{prefix}output.dense"),
            output_norm=self._norm(f"{prefix}output.LayerNorm"),
        )

    def __call__(self, input_ids: Any, mask: Any | None) -> Any:
        """Token states [batch, tokens, hidden] for input ids and a boolean attention mask (None: no padding)."""
        import torch.nn.functional as F

        linear, residual_dtype = self.linears, self.linears.residual_dtype
        batch, length = input_ids.shape
        hidden = self.word[input_ids].to(residual_dtype) + self.position[:length].to(residual_dtype) + self.token_type.to(residual_dtype)
        width = hidden.shape[-1]
        tokens = batch * length
        rows = -(-tokens // linear.row_granule) * linear.row_granule
        padded = linear.row_granule > 1  # decided in Python, so a traced graph (OpenVINO's) holds no pad or slice
        residual = _layer_norm(hidden, self.embedding_norm).reshape(tokens, width)
        residual = _pad_rows(residual, rows) if padded else residual
        attend = None if mask is None else mask[:, None, None, :]
        head_shape = (batch, length, self.heads, width // self.heads)
        for layer in self.layers:
            # [batch, heads, tokens, head dim] views of query, key and value (split from one product, or three).
            products = [_real_rows(linear(residual, packed, None), tokens, padded) for packed in layer.qkv]
            qkv = products[0].view(batch, length, 3 * width).split(width, dim=-1) if len(products) == 1 else products
            query, key, value = (part.view(head_shape).transpose(1, 2) for part in qkv)
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=attend)
            context = context.transpose(1, 2).reshape(tokens, width)
            context = _pad_rows(context, rows) if padded else context
            residual = _layer_norm(residual + linear(context, layer.attention_out, None).to(residual_dtype), layer.attention_norm)
            inner = linear(residual, layer.intermediate, self.gelu)
            residual = _layer_norm(residual + linear(inner, layer.output, None).to(residual_dtype), layer.output_norm)
        return _real_rows(residual, tokens, padded).view(batch, length, width)


class _Renamed:
    """The checkpoint's tensors under their names without `prefix` ("bert." in some checkpoints), read lazily."""

    def __init__(self, weights: Mapping[str, Any], prefix: str) -> None:
        self.weights = weights
        self.prefix = prefix

    def __getitem__(self, name: str) -> Any:
        return self.weights[self.prefix + name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.weights.get(self.prefix + name, default)


def _real_rows(matrix: Any, tokens: int, padded: bool) -> Any:
    """The first `tokens` rows of `matrix` when its rows were padded (the matrix itself when not)."""
    return matrix[:tokens] if padded else matrix


def _pad_rows(matrix: Any, rows: int) -> Any:
    """`matrix` with zero rows appended up to `rows` (itself when it has that many)."""
    import torch.nn.functional as F

    return matrix if matrix.shape[0] == rows else F.pad(matrix, (0, 0, 0, rows - matrix.shape[0]))


def _layer_norm(hidden: Any, norm: _Norm) -> Any:
    import torch.nn.functional as F

    return F.layer_norm(hidden, (hidden.shape[-1],), norm.weight, norm.bias, norm.eps)
