"""Where a model runs and how precisely: the device, the forward pass's precision, the cores it may use."""

from __future__ import annotations

import os

from sbert_cli.errors import UsageError


def pick_device(device: str) -> str:
    """'auto' becomes cuda when torch sees a GPU, else cpu; torch is imported only where a GPU may be present."""
    if device == "cpu":
        return device
    if device == "auto":
        if not _gpu_driver_present():
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    index = device.partition(":")[2]
    if not (device == "cuda" or device.startswith("cuda:")) or (index and not index.isdigit()):
        raise UsageError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"--device {device}: torch sees no CUDA device; pass --device cpu")
    if int(index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s); pass cuda:0")
    return device


def _gpu_driver_present() -> bool:
    """False only where no GPU can be: Linux with neither NVIDIA's nor AMD's kernel driver loaded."""
    if not os.path.isdir("/proc"):
        return True  # not Linux: only torch can tell
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/kfd")


def pick_precision(precision: str, device: str) -> str:
    """The forward pass's precision; 'auto' is fp16 on CUDA, bf16 on a CPU that multiplies bf16 natively, else fp32.

    Where bf16 is emulated (AVX2-only CPUs) it runs several times slower than fp32, so auto keeps fp32 there.
    """
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_native_bf16() -> bool:
    """Whether the CPU has bf16 matrix instructions (AVX512-BF16 or AMX), read from /proc/cpuinfo."""
    return bool(native_bf16_flags())


def native_bf16_flags() -> list[str]:
    """The CPU's bf16 matrix instructions among NATIVE_BF16_FLAGS, from /proc/cpuinfo (none where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    except OSError:
        pass
    return []


def available_cores() -> int:
    """Cores this process may run on (its affinity mask), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
