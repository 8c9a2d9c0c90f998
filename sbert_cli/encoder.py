"""The model: found and described without torch, then loaded once needed to tokenize, run the forward pass and pool."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sbert_cli.errors import ModelError, UsageError, first_line
from sbert_cli.job import DEFAULT_MODEL, ModelOptions

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")

# Files a sentence-transformers or transformers checkpoint needs; skips ONNX/OpenVINO/TF copies.
MODEL_FILE_PATTERNS = ("*.json", "*.txt", "*.model", "*.safetensors", "pytorch_model*.bin")


@dataclass(frozen=True)
class ModelInfo:
    """What the vectors are: recorded in the output's metadata, the manifest and the cache's keys."""

    name: str
    dim: int
    pooling: str
    normalize: bool
    max_length: int
    precision: str
    device: str


@dataclass(frozen=True)
class ModelLayout:
    """What a model directory says about itself, read without torch."""

    transformer_dir: Path
    pooling: str
    normalize: bool
    max_seq_length: int | None
    do_lower_case: bool


@dataclass
class Tokenized:
    """Many texts' token ids in one flat array (truncated, special tokens included), and each text's count before truncation.

    One int32 array instead of a list per text: a 10,000-row window's ids take a few MiB, not tens, and a
    batch is padded by numpy indexing rather than a loop over its rows.
    """

    flat: np.ndarray  # int32: text i's ids are flat[offsets[i]:offsets[i + 1]]
    offsets: np.ndarray  # int64, one more than there are texts
    n_tokens: np.ndarray  # int64: each text's token count before truncation

    @classmethod
    def from_lists(cls, ids: Sequence[Sequence[int]], n_tokens: Sequence[int] | None = None) -> Tokenized:
        """From one id list per text; `n_tokens` defaults to the lists' lengths (nothing was truncated)."""
        offsets = _offsets(np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids)))
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1]))
        counts = np.diff(offsets) if n_tokens is None else np.asarray(n_tokens, dtype=np.int64).reshape(-1)
        return cls(flat, offsets, counts)

    @classmethod
    def concat(cls, parts: Sequence[Tokenized]) -> Tokenized:
        """The texts of several parts, one after another (at least one part)."""
        if len(parts) == 1:
            return parts[0]
        flat = np.concatenate([part.flat for part in parts])
        offsets = _offsets(np.concatenate([part.lengths for part in parts]))
        return cls(flat, offsets, np.concatenate([part.n_tokens for part in parts]))

    def __len__(self) -> int:
        return len(self.n_tokens)

    @property
    def lengths(self) -> np.ndarray:
        """Each text's token count as the model sees it (after truncation)."""
        return np.diff(self.offsets)

    @property
    def ids(self) -> list[list[int]]:
        """Each text's ids as a list (for callers that want plain Python)."""
        return [self.flat[start:end].tolist() for start, end in zip(self.offsets[:-1], self.offsets[1:])]

    def padded(self, rows: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The ids of `rows` padded to the longest of them [rows, longest] (int32), and their lengths."""
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        positions = np.arange(int(lengths.max()) if len(rows) else 0)
        inside = positions < lengths[:, None]
        if not self.flat.size:
            return np.full(inside.shape, pad_id, dtype=np.int32), lengths
        gathered = self.flat[np.where(inside, starts[:, None] + positions, 0)]
        return np.where(inside, gathered, np.int32(pad_id)).astype(np.int32, copy=False), lengths


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """Where each text starts in the flat array, and where the last one ends."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


class Encoder(Protocol):
    """What the pipeline needs from a model; tests use a fake with the same shape."""

    info: ModelInfo

    def tokenize(self, texts: list[str]) -> Tokenized: ...

    def embed_batches(self, tokens: Tokenized, batches: Sequence[np.ndarray], out: np.ndarray, after_batch: Callable[[int], None]) -> int:
        """Write each batch's vectors into out[row] for its rows (indices into `tokens`), calling after_batch(rows)
        after each batch. Returns how many batches ran: fewer than all when batches[returned] ran out of device
        memory, and by then nothing of that try is left on the device."""
        ...

    def at_fp32(self) -> Encoder:
        """The same model at fp32 (itself when it already is): for rows whose vectors overflowed."""
        ...


class Forward(Protocol):
    """A backend's forward pass: token states [batch, tokens, hidden] for ids and a boolean mask (None: no padding)."""

    def __call__(self, input_ids: Any, mask: Any | None) -> Any: ...


@dataclass(frozen=True)
class ModelHandle:
    """A model found and described without torch: a run that needs no forward pass never loads it."""

    directory: Path
    layout: ModelLayout
    info: ModelInfo
    config: dict[str, Any]  # the transformer's config.json

    def load(self) -> Encoder:
        return TransformerEncoder(self)


def open_model(options: ModelOptions) -> ModelHandle:
    """Find the model and decide its device, precision and length; every failure is a one-line SbertError."""
    directory = resolve_model_dir(options.model)
    layout = read_layout(directory)
    device = pick_device(options.device)
    config_file = layout.transformer_dir / "config.json"
    config = _read_json(config_file) if config_file.exists() else {}
    dim = config.get("hidden_size") or config.get("dim") or config.get("d_model")
    if not isinstance(dim, int):
        raise ModelError(f"{config_file}: no hidden_size; sbert encodes with BERT-like transformers models")
    info = ModelInfo(
        name=options.model,
        dim=dim,
        pooling=layout.pooling,
        normalize=options.normalize or layout.normalize,
        max_length=_pick_max_length(layout, config, options.max_length),
        precision=pick_precision(options.precision, device),
        device=device,
    )
    return ModelHandle(directory, layout, info, config)


def load_encoder(
    model: str = DEFAULT_MODEL, device: str = "auto", precision: str = "auto", max_length: int | None = None, normalize: bool = False
) -> Encoder:
    """Find, load and configure a model in one call (the Python API; the CLI loads only when it must)."""
    return open_model(ModelOptions(model, device, precision, max_length, normalize)).load()


def resolve_model_dir(model: str) -> Path:
    """A local directory for `model`: the directory itself, or the hub id's cached (or downloaded) snapshot."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelError(f"model '{model}' is a file; pass the directory that holds config.json")
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or not model.strip():
        raise ModelError(f"model directory '{model}' does not exist; pass --model with an existing directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, allow_patterns=list(MODEL_FILE_PATTERNS)))
    except Exception as exc:  # the hub client raises many types for "not cached and not reachable"
        raise ModelError(
            f"cannot load model '{model}': not in the local Hugging Face cache and the hub cannot be reached "
            f"({type(exc).__name__}: {first_line(exc, 120)}); download it where there is network "
            f"(hf download {model} --local-dir DIR) and pass --model DIR, or set SBERT_MODEL=DIR"
        ) from None


def read_layout(model_dir: Path) -> ModelLayout:
    """Read modules.json, the pooling config and sentence_bert_config.json, or default to plain transformers."""
    modules_file = model_dir / "modules.json"
    if not modules_file.exists():
        if not (model_dir / "config.json").exists():
            raise ModelError(f"{model_dir}: no config.json or modules.json; this is not a model directory")
        return ModelLayout(model_dir, "mean", False, None, False)
    transformer_dir: Path | None = None
    pooling = "mean"
    normalize = False
    for module in _read_json(modules_file):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        module_dir = model_dir / module.get("path", "")
        if kind == "Transformer":
            transformer_dir = module_dir
        elif kind == "Pooling":
            pooling = _read_pooling_mode(module_dir / "config.json")
        elif kind == "Normalize":
            normalize = True
        else:
            raise ModelError(f"{modules_file}: module '{module.get('type')}' is not supported (only Transformer, Pooling, Normalize)")
    if transformer_dir is None:
        raise ModelError(f"{modules_file}: no Transformer module listed")
    st_config_file = transformer_dir / "sentence_bert_config.json"
    st_config = _read_json(st_config_file) if st_config_file.exists() else {}
    return ModelLayout(
        transformer_dir=transformer_dir,
        pooling=pooling,
        normalize=normalize,
        max_seq_length=st_config.get("max_seq_length"),
        do_lower_case=bool(st_config.get("do_lower_case", False)),
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable ({exc})") from None


def _read_pooling_mode(config_file: Path) -> str:
    config = _read_json(config_file) if config_file.exists() else {"pooling_mode_mean_tokens": True}
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
    return modes[0]


def _pick_max_length(layout: ModelLayout, config: dict[str, Any], override: int | None) -> int:
    """sentence-transformers' rule: max_seq_length if configured, else the tokenizer's limit capped by the
    position embeddings; an override may lower it but never exceed the position embeddings."""
    positions = int(config.get("max_position_embeddings") or 512)
    if override is not None:
        if override < 2 or override > positions:
            raise UsageError(f"--max-length {override}: this model takes 2 to {positions} tokens")
        return override
    if layout.max_seq_length:
        return int(layout.max_seq_length)
    tokenizer_file = layout.transformer_dir / "tokenizer_config.json"
    tokenizer_config = _read_json(tokenizer_file) if tokenizer_file.exists() else {}
    return int(min(tokenizer_config.get("model_max_length") or positions, positions))


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


def cpu_has_native_bf16() -> bool:
    """Whether the CPU has bf16 matrix instructions (AVX512-BF16 or AMX), read from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def available_cores() -> int:
    """Cores this process may run on (its affinity mask), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


_PICKLE_REFUSED = (
    "pytorch_model.bin holds pickled code objects besides tensors, and sbert loads weights only; "
    "get model.safetensors from a source you trust"
)


def _load_tokenizer(source: Path) -> Any:
    import transformers
    from transformers import AutoTokenizer

    # Load notes (an unused pooler) and weight-loading bars are not the user's business.
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        return AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for a bad directory
        raise ModelError(f"cannot load model from {source}: {first_line(exc)}") from None


def _load_model(source: Path) -> Any:
    """A transformers model, weights only; a failure is one line naming the directory."""
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(str(source), trust_remote_code=False).eval()
    except pickle.UnpicklingError:
        # torch refused a pickle that calls code; its message ends by suggesting to allow that. Never.
        raise ModelError(f"{source}: {_PICKLE_REFUSED}") from None
    except Exception as exc:
        raise ModelError(f"cannot load model from {source}: {first_line(exc)}") from None


def _read_weights(source: Path) -> Any:
    """The checkpoint's tensors by name, without building a transformers model (None: let transformers load it)."""
    import torch

    if (source / "model.safetensors").is_file():
        return _Safetensors(source / "model.safetensors")
    checkpoint = source / "pytorch_model.bin"
    if not checkpoint.is_file():
        return None  # sharded or unusual checkpoints
    try:
        try:
            return torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # saved in torch's legacy format, which cannot be memory-mapped
            return torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelError(f"{source}: {_PICKLE_REFUSED}") from None


class _Safetensors(Mapping[str, Any]):
    """A safetensors file's tensors, each read when asked for: packing copies the weights one at a time,
    so the checkpoint and its packed copy are never both in memory."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self._file = safe_open(str(path), framework="pt")
        self._names = list(self._file.keys())

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        return self._file.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class TransformerEncoder:
    """A model's tokenizer and forward pass, fed pre-tokenized, length-sorted batches, pooled into vectors.

    A BERT checkpoint runs through bert.Bert straight from its weights, no transformers model built (which
    also skips most of transformers' import time): on oneDNN's kernels on a CPU (kernels.py), on the GPU in
    its precision on CUDA (cuda.py). Other models run through transformers. On a CPU batches run one after
    another (the plain path); on CUDA, cuda.DeviceFeeder keeps the GPU fed.
    """

    def __init__(self, handle: ModelHandle, tokenizer: Any = None) -> None:
        import torch

        self._torch = torch
        self._handle = handle
        self.info = handle.info
        self.device = torch.device(handle.info.device)
        if self.device.type == "cpu":
            torch.set_num_threads(available_cores())
        self.tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(handle.layout.transformer_dir)
        self.lower_case = handle.layout.do_lower_case
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._prefix, self._suffix = self._special_token_split()
        self._fp32: TransformerEncoder | None = None
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.info.precision]
        self.forward: Forward = self._load_forward(dtype)
        self._feeder = None
        if self.device.type == "cuda":
            from sbert_cli.cuda import DeviceFeeder

            self._feeder = DeviceFeeder(self.forward, self.device, self.pad_id, self.info.pooling, self.info.normalize)

    def _load_forward(self, dtype: Any) -> Forward:
        """The backend for this device: a plain BERT from its weights where it can, else transformers' model."""
        handle = self._handle
        source = handle.layout.transformer_dir
        if self.device.type == "cpu":
            from sbert_cli.kernels import fused_bert, fused_bert_supported

            supported, build = fused_bert_supported(handle.config, dtype), lambda weights: fused_bert(weights, handle.config, dtype)
        else:
            from sbert_cli.bert import bert_supported
            from sbert_cli.cuda import device_bert

            supported, build = bert_supported(handle.config), lambda weights: device_bert(weights, handle.config, dtype, self.device)
        weights = _read_weights(source) if supported else None
        if weights is not None:
            try:
                with self._torch.inference_mode():
                    return build(weights)
            except KeyError:  # not the weights a BERT encoder has: transformers knows this checkpoint better
                pass
        return _TransformersForward(self._placed(_load_model(source), dtype), self._autocast(dtype))

    def _placed(self, model: Any, dtype: Any) -> Any:
        """The model on its device in its precision: weights cast once, never per batch."""
        if self.device.type == "cuda":
            return model.to(dtype).to(self.device)
        # fp16 has few CPU kernels: autocast keeps the weights and runs what it can in fp16.
        return model if dtype == self._torch.float16 else model.to(dtype)

    def _autocast(self, dtype: Any) -> Callable[[], AbstractContextManager[Any]]:
        if self.device.type == "cpu" and dtype == self._torch.float16:
            return lambda: self._torch.autocast("cpu", dtype=self._torch.float16)
        return nullcontext

    def _special_token_split(self) -> tuple[int, int] | tuple[None, None]:
        """How many special tokens the tokenizer puts before and after a single text ([CLS] x [SEP]: 1, 1)."""
        probe = "a b c 1 2 3"
        plain = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        full = self.tokenizer(probe)["input_ids"]
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return start, len(full) - start - len(plain)
        return None, None

    def tokenize(self, texts: list[str]) -> Tokenized:
        if self.lower_case:
            texts = [text.lower() for text in texts]
        if not texts:
            return Tokenized(np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.int64))
        # A slice at a time: the tokenizer's per-text objects (tokens, offsets) for a whole window would
        # cost more memory than everything else the window holds.
        return Tokenized.concat([self._tokenize_slice(texts[start : start + _TOKENIZE_SLICE]) for start in range(0, len(texts), _TOKENIZE_SLICE)])

    def _tokenize_slice(self, texts: list[str]) -> Tokenized:
        limit = self.info.max_length
        if self._prefix is None:
            # Unusual special-token layout: let the tokenizer truncate itself.
            counts = [len(ids) for ids in self._encode(texts)]
            truncated = self.tokenizer(texts, truncation=True, max_length=limit, return_attention_mask=False)["input_ids"]
            return Tokenized.from_lists(truncated, counts)
        full = Tokenized.from_lists(self._encode(texts))
        counts = full.n_tokens
        if int(counts.max()) <= limit:
            return full
        # Truncate every long text at once: keep its special tokens and the first (or, for a tokenizer that
        # truncates on the left, the last) tokens of its body, as sentence-transformers does.
        prefix, suffix = self._prefix, self._suffix or 0
        body = limit - prefix - suffix
        position = np.arange(len(full.flat)) - np.repeat(full.offsets[:-1], counts)
        length = np.repeat(counts, counts)
        if getattr(self.tokenizer, "truncation_side", "right") == "left":
            keep = (position < prefix) | (position >= length - suffix - body)
        else:
            keep = (position < prefix + body) | (position >= length - suffix)
        return Tokenized(full.flat[keep], _offsets(np.minimum(counts, limit)), counts)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Untruncated ids with special tokens, from the Rust tokenizer directly where there is one (a third faster
        than through transformers' wrapper, which builds a dict per text)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return self.tokenizer(texts, truncation=False, return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        if backend.truncation is not None or backend.padding is not None:
            backend.no_truncation()  # a tokenizer.json may carry its own settings; sbert truncates itself
            backend.no_padding()
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: no character offsets
        return [encoding.ids for encoding in encode(texts)]

    def embed_batches(self, tokens: Tokenized, batches: Sequence[np.ndarray], out: np.ndarray, after_batch: Callable[[int], None]) -> int:
        if self._feeder is not None:
            return self._feeder.run(tokens, batches, out, after_batch)

        def run_batch(rows: np.ndarray) -> None:
            out[rows] = self._embed_batch(tokens, rows)

        return run_batches(batches, run_batch, after_batch)

    def embed(self, ids: list[list[int]]) -> np.ndarray:
        """Vectors of one batch of token id lists, in their order (a convenience for the Python API and tests)."""
        tokens = Tokenized.from_lists(ids)
        out = np.zeros((len(ids), self.info.dim), dtype=np.float32)
        if self.embed_batches(tokens, [np.arange(len(ids))], out, lambda rows: None) < 1:
            raise ModelError(f"out of device memory on a batch of {len(ids)} texts")
        return out

    def _embed_batch(self, tokens: Tokenized, rows: np.ndarray) -> np.ndarray:
        """The plain path: one batch padded, run and pooled, its vectors back in numpy."""
        torch = self._torch
        ids, lengths = tokens.padded(rows, self.pad_id)
        mask = None if int(lengths.min()) == ids.shape[1] else torch.from_numpy(np.arange(ids.shape[1]) < lengths[:, None])
        with torch.inference_mode():
            hidden = self.forward(torch.from_numpy(ids).long(), mask)
            return sentence_vectors(hidden, mask, self.info.pooling, self.info.normalize).numpy()

    def at_fp32(self) -> Encoder:
        if self.info.precision == "fp32":
            return self
        if self._fp32 is None:
            handle = replace(self._handle, info=replace(self.info, precision="fp32"))
            self._fp32 = TransformerEncoder(handle, tokenizer=self.tokenizer)
        return self._fp32


_TOKENIZE_SLICE = 4096  # texts tokenized per call


class _TransformersForward:
    """transformers' model as a backend, for checkpoints bert.Bert does not run."""

    def __init__(self, model: Any, autocast: Callable[[], AbstractContextManager[Any]]) -> None:
        self.model = model
        self.autocast = autocast

    def __call__(self, input_ids: Any, mask: Any | None) -> Any:
        import torch

        attention_mask = torch.ones_like(input_ids) if mask is None else mask.long()
        with self.autocast():
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def run_batches(batches: Sequence[np.ndarray], run_batch: Callable[[np.ndarray], None], after_batch: Callable[[int], None]) -> int:
    """Run batches in order until one runs out of device memory; return how many ran.

    The retry is the caller's, after this has returned: the failed try's tensors, which the exception's
    traceback holds, are freed by then and the CUDA cache is emptied, so the smaller batches that follow get
    all of the device's memory. (Retrying inside the except block kept them allocated.)
    """
    import torch

    for index, rows in enumerate(batches):
        try:
            run_batch(rows)
        except torch.cuda.OutOfMemoryError:
            pass  # handled after the except block, once the exception and the frames it holds are gone
        else:
            after_batch(len(rows))
            continue
        release_device_memory()
        return index
    return len(batches)


def release_device_memory() -> None:
    """Free what a failed try left: unreachable tensors now, then the CUDA allocator's cached blocks."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def sentence_vectors(hidden: Any, mask: Any | None, pooling: str, normalize: bool) -> Any:
    """float32 sentence vectors from a forward pass's token states: pooled, then L2-normalised if asked."""
    import torch

    pooled = pool(hidden.float(), mask, pooling)
    return torch.nn.functional.normalize(pooled, p=2, dim=1) if normalize else pooled


def pool(hidden: Any, mask: Any | None, mode: str) -> Any:
    """Pool token vectors [batch, tokens, dim] into sentence vectors over a boolean attention mask (None: every
    token counts), as sentence-transformers' Pooling does."""
    import torch

    if mode == "cls":
        return hidden[:, 0]
    if mask is None:
        if mode == "max":
            return hidden.max(dim=1).values
        summed = hidden.sum(dim=1)
        counts = torch.full((hidden.shape[0], 1), float(hidden.shape[1]), dtype=hidden.dtype, device=hidden.device)
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        if mode == "max":
            return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
        summed = (hidden * weights).sum(dim=1)
        counts = weights.sum(dim=1).clamp(min=1e-9)
    if mode == "mean_sqrt_len":
        return summed / counts.sqrt()
    return summed / counts
