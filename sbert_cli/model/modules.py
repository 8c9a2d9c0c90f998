"""The modules a sentence-transformers model runs after its transformer, described without torch: its pooling and the
head after pooling (Dense layers, Normalize), plus what sbert appends to that head (truncation, --normalize)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbert_cli.errors import ModelError, UsageError

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len", "weightedmean", "lasttoken")

# Dense activations sbert runs, by torch class name (backends.heads maps each to its function). sentence-transformers
# imports whatever class the config names under torch.*; one outside torch it replaces by Tanh, and so does sbert.
DENSE_ACTIVATIONS = ("Tanh", "Identity", "ReLU", "GELU", "Sigmoid", "SiLU")


@dataclass(frozen=True)
class PoolingConfig:
    """1_Pooling/config.json: one mode, and whether the prompt's tokens count (include_prompt false: they do not)."""

    mode: str = "mean"
    include_prompt: bool = True


@dataclass(frozen=True)
class DenseLayer:
    """A Dense module: activation(x W^T + b), plus x (or x R^T) with use_residual; weights in its directory."""

    directory: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str  # one of DENSE_ACTIVATIONS
    residual: bool = False


@dataclass(frozen=True)
class NormalizeLayer:
    """A Normalize module, or --normalize: L2 normalisation of each vector."""


@dataclass(frozen=True)
class TruncateLayer:
    """--truncate-dim: keep the first `dim` dimensions (sentence-transformers' truncate_dim)."""

    dim: int


HeadLayer = DenseLayer | NormalizeLayer | TruncateLayer


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable ({exc})") from None


def read_pooling(config_file: Path) -> PoolingConfig:
    """The pooling mode from either config style (legacy pooling_mode_* flags, or pooling_mode); one mode only."""
    config = read_json(config_file) if config_file.exists() else {"pooling_mode_mean_tokens": True}
    if isinstance(config.get("pooling_mode"), str):
        modes = [config["pooling_mode"].replace("mean_sqrt_len_tokens", "mean_sqrt_len")]
    else:
        modes = [
            name
            for name, key in (
                ("cls", "pooling_mode_cls_token"),
                ("mean", "pooling_mode_mean_tokens"),
                ("max", "pooling_mode_max_tokens"),
                ("mean_sqrt_len", "pooling_mode_mean_sqrt_len_tokens"),
                ("weightedmean", "pooling_mode_weightedmean_tokens"),
                ("lasttoken", "pooling_mode_lasttoken"),
            )
            if config.get(key)
        ]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ModelError(f"{config_file}: pooling {modes or 'none'} is not supported; sbert pools by one of {', '.join(POOLING_MODES)}")
    return PoolingConfig(modes[0], bool(config.get("include_prompt", True)))


def read_dense(module_dir: Path) -> DenseLayer:
    """A Dense module's config.json; its weights are read when the model is loaded."""
    config_file = module_dir / "config.json"
    if not config_file.exists():
        raise ModelError(f"{module_dir}: a Dense module without config.json; the model directory is incomplete")
    config = read_json(config_file)
    try:
        in_features, out_features = int(config["in_features"]), int(config["out_features"])
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{config_file}: no in_features and out_features; the Dense module's config is damaged") from None
    for key in ("module_input_name", "module_output_name"):
        if config.get(key) not in (None, "sentence_embedding"):
            raise ModelError(f"{config_file}: a Dense over '{config[key]}' is not supported; sbert runs Dense on the sentence embedding only")
    return DenseLayer(
        module_dir, in_features, out_features, bool(config.get("bias", True)), _activation(config_file, config), bool(config.get("use_residual", False))
    )


def _activation(config_file: Path, config: dict[str, Any]) -> str:
    name = str(config.get("activation_function") or "torch.nn.modules.activation.Tanh")
    if not name.startswith("torch."):
        return "Tanh"  # sentence-transformers without trust_remote_code: untrusted paths fall back to Tanh
    short = name.rsplit(".", 1)[-1]
    if short not in DENSE_ACTIVATIONS:
        raise ModelError(f"{config_file}: activation '{name}' is not supported; sbert runs Dense with one of {', '.join(DENSE_ACTIVATIONS)}")
    return short


def head_dim(layers: tuple[HeadLayer, ...], pooled_dim: int, where: Path) -> int:
    """The vectors' length after the head, checking that each Dense layer takes what the one before it gives."""
    dim = pooled_dim
    for layer in layers:
        if isinstance(layer, DenseLayer):
            if layer.in_features != dim:
                raise ModelError(f"{layer.directory}: Dense takes {layer.in_features} dimensions but gets {dim}; the model's modules do not fit together")
            dim = layer.out_features
        elif isinstance(layer, TruncateLayer):
            if layer.dim > dim:
                raise UsageError(f"--truncate-dim {layer.dim}: {where} gives {dim}-dimensional vectors; pass --truncate-dim {dim} or less")
            dim = layer.dim
    return dim


def ends_normalized(head: tuple[HeadLayer, ...]) -> bool:
    """Whether the head's vectors come out L2-normalised: a Normalize is its last layer."""
    return bool(head) and isinstance(head[-1], NormalizeLayer)


def full_head(layers: tuple[HeadLayer, ...], truncate_dim: int | None, normalize: bool) -> tuple[HeadLayer, ...]:
    """The model's own head, then --truncate-dim, then --normalize (as sentence-transformers orders truncate_dim and
    normalize_embeddings); a Normalize already last is not repeated."""
    head = layers + ((TruncateLayer(truncate_dim),) if truncate_dim is not None else ())
    if normalize and not ends_normalized(head):
        head += (NormalizeLayer(),)
    return head
