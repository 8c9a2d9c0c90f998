"""Backends: one module each behind backends.base.Backend, and the one place where a device's backend is chosen.

To add one (ROCm, ONNX, MPS): write backends/NAME.py with a class that loads itself for a model and a target
(its `load` returns None for a model it does not run) and embeds a window's batches; then add its loader to
BACKENDS under the device kind it serves, ahead of the ones it should be tried before, and to CHOSEN if
`--backend` should name it.
"""

from __future__ import annotations

from sbert_cli.backends.automodel import TransformersModel
from sbert_cli.backends.base import Backend, BackendLoader, Target
from sbert_cli.backends.cuda import CudaBert
from sbert_cli.backends.onednn import OneDnnBert
from sbert_cli.backends.openvino_bert import OpenVinoBert
from sbert_cli.backends.openvino_int8 import OpenVinoInt8Bert
from sbert_cli.errors import ModelError
from sbert_cli.model.description import ModelDescription

# For each kind of device (a torch device's type), the backends `--backend auto` tries in order: the first that
# runs the model wins. OpenVINO's loader declines where it is not installed or was not measured ahead.
# --precision int8's loader comes first everywhere: it runs the model, or says in one line why int8 cannot run, so
# that no other backend ever runs an int8 request at another precision.
BACKENDS: dict[str, tuple[BackendLoader, ...]] = {
    "cpu": (OpenVinoInt8Bert.load, OpenVinoBert.load, OneDnnBert.load, TransformersModel.load),
    "cuda": (OpenVinoInt8Bert.load, CudaBert.load, TransformersModel.load),
}
# What the other `--backend` choices try, for each kind of device (OpenVINO's loader says itself where it cannot run).
CHOSEN: dict[str, dict[str, tuple[BackendLoader, ...]]] = {
    "openvino": {"cpu": (OpenVinoInt8Bert.load, OpenVinoBert.load_chosen), "cuda": (OpenVinoInt8Bert.load, OpenVinoBert.load_chosen)},
    "torch": {"cpu": (OpenVinoInt8Bert.load, OneDnnBert.load, TransformersModel.load), "cuda": BACKENDS["cuda"]},
}


def load_backend(model: ModelDescription, target: Target) -> Backend:
    """The first backend for the target's kind of device, among those `--backend` allows, that runs this model."""
    loaders = BACKENDS if model.backend == "auto" else CHOSEN[model.backend]
    for load in loaders.get(target.device_kind, ()):
        backend = load(model, target)
        if backend is not None:
            return backend
    raise ModelError(f"{model.info.name}: no backend runs this model on {target.device}; pass another --device")
