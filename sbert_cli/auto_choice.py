"""What --device, --backend and --precision auto pick on this machine, and why: the line `sbert --version` adds."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec

from sbert_cli.model.device import native_bf16_flags, pick_device, pick_precision

OPENVINO_INSTALL = "pip install 'sbert-cli[openvino]'"


def auto_choice() -> str:
    """One line: the device, backend and precision auto picks for a BERT model here, and the facts behind them.
    Imports neither torch (unless a GPU driver is loaded, as the run itself would) nor OpenVINO."""
    device = pick_device("auto")
    precision = pick_precision("auto", device)
    if device != "cpu":
        return f"auto here: --device {device} --backend torch --precision {precision} (torch sees a CUDA GPU)"
    flags = native_bf16_flags()
    openvino = _installed_version("openvino") if find_spec("openvino") is not None else None
    if not flags:
        why = "the CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 is emulated and slower than fp32"
        return f"auto here: --device cpu --backend torch --precision {precision} ({why})"
    bf16 = f"the CPU multiplies bf16 natively: {', '.join(flags)}"
    if openvino is None:
        return f"auto here: --device cpu --backend torch --precision {precision} ({bf16}; OpenVINO, faster here, is not installed: {OPENVINO_INSTALL})"
    return f"auto here: --device cpu --backend openvino --precision {precision} ({bf16}; OpenVINO {openvino} runs it fastest)"


def _installed_version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "(version unknown)"
