"""The OpenVINO backend (a dependency on x86-64 Linux and Windows, the `openvino` extra elsewhere): a BERT checkpoint on OpenVINO's CPU kernels, several batches in flight."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from sbert_cli.backends import numpy_pooling
from sbert_cli.backends.base import Target
from sbert_cli.backends.bert import bert_supported
from sbert_cli.backends.openvino_export import converted_model
from sbert_cli.backends.openvino_runtime import openvino_runtime
from sbert_cli.backends.pooling import sentence_vectors
from sbert_cli.errors import ModelError, SbertError, UsageError, first_line
from sbert_cli.model.derived import derived_key, user_cache
from sbert_cli.model.description import ModelDescription
from sbert_cli.model.device import cpu_has_native_bf16
from sbert_cli.model.tokens import Tokenized
from sbert_cli.plan import OPENVINO_BATCH_SHAPE

INSTALL_HINT = "pip install 'sbert-cli[openvino]'"

# OpenVINO keeps the kernels it builds for each new batch shape in a cache of 5,000 entries per kind of kernel and
# stream by default, and a long run meets hundreds of (rows, tokens) shapes: its memory grew with the input (a
# 200,000-row run peaked 1.5x as high as a 20,000-row one). At 50 entries it stays bounded and encodes as fast:
# sorted batches meet each shape among neighbours of the same length, so few shapes are in use at any time.
RUNTIME_CACHE_ENTRIES = 50


# OpenVINO's own cache of compiled models (its CACHE_DIR), in the user's cache directory: a run after the first loads
# the model compiled for these options instead of compiling it again, which takes longer than a small job's
# encoding (docs/speed.md, start-up). The runtime names each file by a hash of the model, and compiles afresh
# (replacing the file) when one cannot be read. Its hash leaves out the precision: a model compiled at f32 and loaded
# for bf16 gave wrong vectors (OpenVINO 2026.4), so each set of compile options has a folder of its own.
COMPILED_MODELS = "openvino-compiled"


def writable_folder(folder: Path) -> Path | None:
    """`folder`, made if missing, or None where it cannot be written (then nothing is cached)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def compile_on_cpu(model: Path | Any, precision: str, threads: int, latency: bool = False) -> Any:
    """A model on disk (through OpenVINO's model cache) or a graph in memory, compiled for the CPU at `precision`
    (OpenVINO's name: f32 or bf16), for throughput or, with `latency`, one stream."""
    openvino = openvino_runtime()
    config = compile_options(precision, threads, latency)
    core = openvino.Core()
    if not isinstance(model, Path):
        return core.compile_model(model, "CPU", config)
    folder = compiled_cache(openvino, config)
    if folder is None:
        return core.compile_model(str(model), "CPU", config)
    core.set_property({"CACHE_DIR": str(folder)})
    # One process at a time compiles into the folder: a run that starts while another writes the cache file read it
    # half-written and failed to compile (two runs at once from an empty cache). The second waits, then loads it.
    with _held(folder / ".compiling.lock"):
        return core.compile_model(str(model), "CPU", {**config, **_size_mode(openvino)})


def compile_options(precision: str, threads: int, latency: bool = False) -> dict[str, Any]:
    """What compile_on_cpu asks OpenVINO for; its model cache keeps a folder for each set of them."""
    return {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY" if latency else "THROUGHPUT",
        "INFERENCE_NUM_THREADS": threads,
        "CPU_RUNTIME_CACHE_CAPACITY": RUNTIME_CACHE_ENTRIES,
    }


def compiled_cache(openvino: Any, config: dict[str, Any]) -> Path | None:
    """OpenVINO's model cache for these compile options, in the user's cache directory; None where it cannot be
    written (then nothing is cached)."""
    return writable_folder(user_cache(COMPILED_MODELS) / derived_key({**config, "openvino": openvino.__version__}))


def _size_mode(openvino: Any) -> dict[str, str]:
    """The cache keeps the compiled graph only where the runtime can (its "optimize size" mode, OpenVINO 2024.5 on):
    the weights are read from the conversion, so a cached model costs 0.4 MB on disk instead of the checkpoint's size
    again, and loads as fast (0.52-0.57 s against 0.53-0.59, a bert-base model at bf16 on a busy 2-core host)."""
    return {"CACHE_MODE": "OPTIMIZE_SIZE"} if hasattr(openvino.properties, "cache_mode") else {}


@contextmanager
def _held(lock_file: Path) -> Iterator[None]:
    """An exclusive flock on `lock_file` for the block (waiting for it); where there is no flock, nothing."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file drops the lock, as the kernel does if the process dies


def openvino_installed() -> bool:
    return find_spec("openvino") is not None


def openvino_runs(model: ModelDescription, target: Target) -> bool:
    """Whether OpenVINO can run the model for the target: a CPU, fp32 or bf16 (bf16 only where the CPU multiplies
    it natively; elsewhere OpenVINO would quietly run fp32), a plain BERT."""
    precision_runs = target.precision == "fp32" or (target.precision == "bf16" and cpu_has_native_bf16())
    return target.device_kind == "cpu" and precision_runs and bert_supported(model.config)


def openvino_wins_here() -> bool:
    """Where `--backend auto` picks OpenVINO: CPUs with native bf16 (AVX512-BF16 or AMX), where it was measured
    ahead of the oneDNN backend at both precisions (docs/speed.md). On AVX2-only CPUs it was not measured, so auto
    keeps oneDNN there; `--backend openvino` runs it anyway."""
    return cpu_has_native_bf16()


class OpenVinoBert:
    """A BERT checkpoint converted to OpenVINO (once, cached: openvino_export) and compiled for throughput.

    OpenVINO splits the cores into streams that each run a batch; twice as many requests as it suggests are kept
    in flight, so that while it computes, Python pads the next batches and pools the finished ones. Pooling and
    the head run in numpy (backends.numpy_pooling), so that this path never imports torch, which takes longer to
    import than the whole run of a small job; a model with a Dense module pools through torch, as every backend.
    """

    name = "openvino"
    batch_shape = OPENVINO_BATCH_SHAPE

    def __init__(self, compiled: Any, target: Target) -> None:
        self.target = target
        self.pools_in_numpy = numpy_pooling.runs_in_numpy(target.head_layers)
        self.requests = [compiled.create_infer_request() for _ in range(2 * int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))]

    @classmethod
    def load(cls, model: ModelDescription, target: Target) -> OpenVinoBert | None:
        """The backend, or None where `--backend auto` should try the next one (see openvino_runs, openvino_wins_here)."""
        if not (openvino_installed() and openvino_wins_here() and openvino_runs(model, target)):
            return None
        try:
            return cls._compiled(model, target)
        except ModelError:
            return None  # a model OpenVINO could not convert or compile: torch's backends run it as before

    @classmethod
    def load_chosen(cls, model: ModelDescription, target: Target) -> OpenVinoBert:
        """The backend when `--backend openvino` asks for it: a one-line error where it cannot run."""
        if target.device_kind == "cpu" and not openvino_installed():  # on a GPU, installing it would not help
            raise UsageError(f"--backend openvino: OpenVINO is not installed; {INSTALL_HINT}, or pass --backend auto")
        backend = cls._compiled(model, target) if openvino_runs(model, target) else None
        if backend is None:
            raise UsageError(
                f"--backend openvino: {model.info.name} cannot run there (it runs BERT models at fp32, or bf16 where the CPU has it, "
                f"on --device cpu); pass --backend auto"
            )
        return backend

    @classmethod
    def _compiled(cls, model: ModelDescription, target: Target) -> OpenVinoBert | None:
        """The model converted (once) and compiled for the target; None where its checkpoint is not one file sbert's
        BERT reads; a ModelError where OpenVINO fails on it."""
        try:
            model_xml = converted_model(model)
            if model_xml is None:
                return None
            # a few texts (sim): the latency hint's one stream compiles and starts sooner
            return cls(compile_on_cpu(model_xml, "bf16" if target.precision == "bf16" else "f32", target.threads, model.few_texts), target)
        except SbertError:
            raise
        except Exception as exc:  # the converter's and the runtime's errors have no common class
            raise ModelError(f"{model.info.name}: OpenVINO could not convert or compile this model: {first_line(exc)}; pass --backend torch") from None

    def embed_batches(self, tokens: Tokenized, batches: Sequence[np.ndarray], out: np.ndarray, after_batch: Callable[[int], None]) -> int:
        idle = list(self.requests)
        in_flight: deque[tuple[Any, np.ndarray, np.ndarray]] = deque()

        def finish_oldest() -> None:
            request, rows, mask = in_flight.popleft()
            request.wait()
            out[rows] = pooled(request.get_output_tensor(0).data, mask, self.target, self.pools_in_numpy)  # before the request runs again
            idle.append(request)
            after_batch(len(rows))

        try:
            for rows in batches:
                if not idle:
                    finish_oldest()
                ids, lengths = tokens.padded(rows, self.target.pad_id)
                mask = np.arange(ids.shape[1]) < lengths[:, None]
                request = idle.pop()
                request.start_async({"input_ids": ids, "attention_mask": mask})  # inputs are copied: ids may go
                in_flight.append((request, rows, mask))
            while in_flight:
                finish_oldest()
        finally:
            for request, _, _ in in_flight:  # on an error, nothing is left running into buffers being freed
                request.wait()
        return len(batches)


def pooled(hidden: np.ndarray, mask: np.ndarray, target: Target, in_numpy: bool) -> np.ndarray:
    """A batch's sentence vectors from OpenVINO's token states: in numpy, or (a Dense head) through torch."""
    if in_numpy:
        return numpy_pooling.sentence_vectors(hidden, mask, target.pooling, target.head_layers)
    import torch

    with torch.inference_mode():
        return sentence_vectors(torch.from_numpy(hidden), torch.from_numpy(mask), target.pooling, target.head).numpy()
