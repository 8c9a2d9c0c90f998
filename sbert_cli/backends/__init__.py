"""Backends: one module each behind backends.base.Backend, and the one place where a device's backend is chosen.

To add one (ROCm, ONNX, MPS): write backends/NAME.py with a class that loads itself for a model and a target
(its `load` returns None for a model it does not run) and embeds a window's batches; then add its loader to
BACKENDS under the device kind it serves, ahead of the ones it should be tried before.
"""

from __future__ import annotations

from sbert_cli.backends.automodel import TransformersModel
from sbert_cli.backends.base import Backend, BackendLoader, Target
from sbert_cli.backends.cuda import CudaBert
from sbert_cli.backends.onednn import OneDnnBert
from sbert_cli.errors import ModelError
from sbert_cli.model.description import ModelDescription

# For each kind of device (a torch device's type), the backends to try in order: the first that runs the model wins.
BACKENDS: dict[str, tuple[BackendLoader, ...]] = {
    "cpu": (OneDnnBert.load, TransformersModel.load),
    "cuda": (CudaBert.load, TransformersModel.load),
}


def load_backend(model: ModelDescription, target: Target) -> Backend:
    """The first backend for the target's kind of device that runs this model."""
    for load in BACKENDS.get(target.device.type, ()):
        backend = load(model, target)
        if backend is not None:
            return backend
    raise ModelError(f"{model.info.name}: no backend runs this model on {target.device}; pass another --device")
