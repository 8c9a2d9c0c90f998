"""What a model does after pooling, on the device of its forward pass: Dense layers, Normalize, and sbert's own
truncation and --normalize. Every backend pools through backends.pooling, which ends in this head."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sbert_cli.backends.weights import read_weights
from sbert_cli.errors import ModelError
from sbert_cli.model.modules import DenseLayer, HeadLayer, NormalizeLayer, TruncateLayer


def _activation(name: str) -> Callable[[Any], Any]:
    """A Dense activation's function, by the torch class name the model's config gives (model.modules.DENSE_ACTIVATIONS)."""
    import torch
    import torch.nn.functional as F

    return {
        "Tanh": torch.tanh,
        "Identity": lambda x: x,
        "ReLU": F.relu,
        "GELU": F.gelu,
        "Sigmoid": torch.sigmoid,
        "SiLU": F.silu,
    }[name]


class DenseOnDevice:
    """A Dense module's weights on the device, in float32 whatever the run's precision: a product of
    [rows, dim] x [dim, out] is nothing beside the transformer, and the pooled vectors are float32 already."""

    def __init__(self, layer: DenseLayer, device: Any) -> None:
        import torch

        weights = read_weights(layer.directory)
        if weights is None:
            raise ModelError(f"{layer.directory}: no model.safetensors or pytorch_model.bin; the Dense module's weights are missing")
        try:
            self.weight = weights["linear.weight"].to(device=device, dtype=torch.float32, copy=True)
            self.bias = weights["linear.bias"].to(device=device, dtype=torch.float32, copy=True) if layer.bias else None
            self.residual = None
            if layer.residual and layer.in_features != layer.out_features:
                self.residual = weights["residual.weight"].to(device=device, dtype=torch.float32, copy=True)
        except KeyError as missing:
            raise ModelError(f"{layer.directory}: no tensor {missing} among the Dense module's weights") from None
        if tuple(self.weight.shape) != (layer.out_features, layer.in_features):
            raise ModelError(f"{layer.directory}: linear.weight is {tuple(self.weight.shape)}, not ({layer.out_features}, {layer.in_features}) as its config says")
        self.with_residual = layer.residual
        self.activation = _activation(layer.activation)

    def __call__(self, vectors: Any) -> Any:
        import torch.nn.functional as F

        out = self.activation(F.linear(vectors, self.weight, self.bias))
        if self.with_residual:
            out = out + (vectors if self.residual is None else F.linear(vectors, self.residual))
        return out


class Head:
    """The layers after pooling, in order, on one device: pooled float32 vectors in, the run's vectors out."""

    def __init__(self, layers: tuple[HeadLayer, ...], device: Any) -> None:
        self.steps: list[Callable[[Any], Any]] = [_step(layer, device) for layer in layers]

    def __call__(self, vectors: Any) -> Any:
        for step in self.steps:
            vectors = step(vectors)
        return vectors


def _step(layer: HeadLayer, device: Any) -> Callable[[Any], Any]:
    import torch.nn.functional as F

    if isinstance(layer, DenseLayer):
        return DenseOnDevice(layer, device)
    if isinstance(layer, NormalizeLayer):
        return lambda vectors: F.normalize(vectors, p=2, dim=1)
    if isinstance(layer, TruncateLayer):
        return lambda vectors: vectors[:, : layer.dim]
    raise TypeError(f"not a head layer: {layer!r}")
