"""The fallback backend: transformers' own model, for any checkpoint the BERT backends do not run."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from sbert_cli.backends.base import Target
from sbert_cli.backends.feeding import ForwardBackend
from sbert_cli.backends.weights import PICKLE_REFUSED
from sbert_cli.errors import ModelError, first_line
from sbert_cli.model.description import ModelDescription


class TransformersForward:
    """transformers' model as a forward pass: token states for ids and a boolean mask."""

    def __init__(self, model: Any, autocast: Callable[[], AbstractContextManager[Any]]) -> None:
        self.model = model
        self.autocast = autocast

    def __call__(self, input_ids: Any, mask: Any | None) -> Any:
        import torch

        attention_mask = torch.ones_like(input_ids) if mask is None else mask.long()
        with self.autocast():
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class TransformersModel(ForwardBackend):
    """Any transformers encoder, on any device torch has, in the run's precision; never with remote code."""

    name = "transformers"

    @classmethod
    def load(cls, model: ModelDescription, target: Target) -> TransformersModel:
        loaded = load_model(model.layout.transformer_dir)
        return cls(TransformersForward(_placed(loaded, target), _autocast(target)), target)


def load_model(source: Path) -> Any:
    """A transformers model, weights only; a failure is one line naming the directory."""
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(str(source), trust_remote_code=False).eval()
    except pickle.UnpicklingError:
        # torch refused a pickle that calls code; its message ends by suggesting to allow that. Never.
        raise ModelError(f"{source}: {PICKLE_REFUSED}") from None
    except Exception as exc:
        raise ModelError(f"cannot load model from {source}: {first_line(exc)}") from None


def _placed(model: Any, target: Target) -> Any:
    """The model on its device in its precision: weights cast once, never per batch."""
    import torch

    if target.device_kind != "cpu":
        return model.to(target.dtype).to(target.torch_device)
    # fp16 has few CPU kernels: autocast keeps the weights and runs what it can in fp16.
    return model if target.dtype == torch.float16 else model.to(target.dtype)


def _autocast(target: Target) -> Callable[[], AbstractContextManager[Any]]:
    import torch

    if target.device_kind == "cpu" and target.dtype == torch.float16:
        return lambda: torch.autocast("cpu", dtype=torch.float16)
    return nullcontext
