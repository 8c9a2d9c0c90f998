"""How texts become vectors: distinct texts, the cache, tokens and batches, the model loaded on first need, and
recovery (the token budget cut after out-of-memory, non-finite rows re-run at fp32). encode, sim, evaluate and
the Ray actors all embed through here."""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sbert_cli import encoder as encoders
from sbert_cli.batching import iter_windows
from sbert_cli.errors import ModelError
from sbert_cli.model.derived import ONE_TIME
from sbert_cli.model.saved_tokenizer import first_run
from sbert_cli.plan import BatchPlan
from sbert_cli.stats import EncodeStats

if TYPE_CHECKING:
    from sbert_cli.cache import Profile, VectorCache
    from sbert_cli.encoder import Encoder, ModelHandle
    from sbert_cli.model.options import ModelOptions
    from sbert_cli.model.description import ModelInfo
    from sbert_cli.model.tokens import Tokenized


def on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ModelSource:
    """The run's model, loaded the first time a text must be encoded (a run the cache answers never loads it),
    and what its device has shown it can take: the token budget that out-of-memory has cut down, if it has."""

    def __init__(
        self,
        info: ModelInfo,
        load: Callable[[], Encoder],
        *,
        cache: VectorCache | None = None,
        handle: ModelHandle | None = None,
        notice: Callable[[str], None] = on_stderr,
    ) -> None:
        self.info = info
        self.cache = cache
        self.load_seconds = 0.0
        self.one_time_seconds = 0.0  # of the load: a conversion or a saved tokenizer, once per model
        self.token_budget: int | None = None  # None: the plan's own
        self.notice = notice  # told once when the budget is first cut down; a no-op under --quiet
        self._load = load
        self._handle = handle
        self._encoder: Encoder | None = None
        self._loading: threading.Thread | None = None
        self._load_error: BaseException | None = None
        self._profile: Profile | None = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, model: Encoder | ModelSource) -> ModelSource:
        """A source for an encoder already loaded (the Python API, sim and evaluate's tests, Ray actors)."""
        return model if isinstance(model, ModelSource) else cls(model.info, lambda: model)

    @classmethod
    def for_handle(cls, handle: ModelHandle, cache: VectorCache | None, notice: Callable[[str], None] = on_stderr) -> ModelSource:
        description = getattr(handle, "description", None)  # a test's fake handle describes no model files
        if description is not None and first_run(description):
            # Said at once, before the imports and the load: the one-time steps name themselves and their time later.
            notice(f"sbert: first run with {description.info.name}: preparing it once for later runs (one-time steps below)")
        source = cls(handle.info, handle.load, cache=cache, handle=handle, notice=notice)
        if cache is None:
            source.start_loading()  # without a cache every text needs the model: load it while the input is read
        return source

    def start_loading(self) -> None:
        """Load the model in a thread of its own now (OpenVINO's compile and torch's weight load let go of Python's
        lock), so that the load overlaps what comes before the first window is encoded; encoder() waits for it."""
        self._loading = threading.Thread(target=self._load_now, name="sbert-model-load")
        self._loading.start()

    def _load_now(self) -> None:
        started, earlier = time.perf_counter(), ONE_TIME.seconds
        ONE_TIME.announce = self.notice  # a first run with this model says what it does once (derived folders)
        try:
            self._encoder = self._load()
        except BaseException as error:  # raised again where the encoder is asked for, in the run's own thread
            self._load_error = error
        finally:
            ONE_TIME.announce = None
            self.load_seconds = time.perf_counter() - started
            self.one_time_seconds = ONE_TIME.seconds - earlier

    def plan(self, plan: BatchPlan) -> BatchPlan:
        """`plan` with the loaded backend's own batch shape where the user left it auto, within the token budget the
        device has shown it can take."""
        shape = self._encoder.batch_shape if self._encoder is not None else None
        return plan.for_backend(shape).with_token_budget(self.token_budget)

    def cut_budget(self, failed_tokens: int, stats: EncodeStats) -> None:
        """A batch of `failed_tokens` padded tokens ran out of device memory: batches hold at most half that from now on."""
        budget = max(1, failed_tokens // 2)
        if self.token_budget is None:
            self.notice(
                f"sbert: out of GPU memory on a batch of {failed_tokens:,} padded tokens; batches hold at most "
                f"{budget:,} padded tokens for the rest of the run"
            )
        self.token_budget = budget if self.token_budget is None else min(budget, self.token_budget)
        stats.out_of_memory += 1
        stats.token_budget = self.token_budget

    def encoder(self) -> Encoder:
        with self._lock:
            if self._loading is not None:
                self._loading.join()
                self._loading = None
            elif self._encoder is None and self._load_error is None:
                self._load_now()
            if self._load_error is not None:
                raise self._load_error
            assert self._encoder is not None
            return self._encoder

    def profile(self) -> Profile:
        """The cache profile: the model files' fingerprint plus every option that changes a vector."""
        assert self.cache is not None and self._handle is not None
        if self._profile is None:
            self._profile = self.cache.profile(self.info.name, self._handle.directory, vector_options(self.info))
        return self._profile


def vector_options(info: ModelInfo) -> dict[str, Any]:
    """Every option that changes a vector, for the cache's profile. The prompt and --truncate-dim are there only when
    set, so that a cache filled before they existed still serves its vectors."""
    options: dict[str, Any] = {"pooling": info.pooling, "normalize": info.normalize, "max_length": info.max_length, "precision": info.precision}
    if info.prompt:
        options["prompt"] = info.prompt
    if info.truncate_dim is not None:
        options["truncate_dim"] = info.truncate_dim
    return options


@dataclass
class TextWork:
    """A window's texts reduced to the distinct ones, with what the cache already knows and what is left to encode."""

    slots: np.ndarray  # row -> index of its text among the distinct texts
    texts: list[str]  # the distinct texts
    vectors: np.ndarray  # [distinct, dim], filled from the cache now and by the encoder later
    n_tokens: np.ndarray  # untruncated token counts of the distinct texts
    missing: list[int]  # distinct texts the cache did not have
    plan: BatchPlan  # what the batches were cut by
    tokens: Tokenized | None = None  # of the missing texts
    batches: list[np.ndarray] = field(default_factory=list)  # indices into `tokens`


def prepare_texts(texts: list[str], source: ModelSource, plan: BatchPlan, stats: EncodeStats) -> TextWork:
    """Deduplicate, look up the cache, tokenize and batch what is left (runs ahead, in the reading thread)."""
    distinct: dict[str, int] = {}
    slots = np.fromiter((distinct.setdefault(text, len(distinct)) for text in texts), dtype=np.int64, count=len(texts))
    unique = list(distinct)
    vectors, n_tokens = np.zeros((len(unique), source.info.dim), np.float32), np.zeros(len(unique), np.int64)
    work = TextWork(slots, unique, vectors, n_tokens, list(range(len(unique))), source.plan(plan))
    stats.repeated += len(texts) - len(unique)
    if source.cache is not None and unique:
        started = time.perf_counter()
        found = source.cache.lookup(source.profile(), unique, source.info.dim)
        for index, (vector, count) in found.items():
            work.vectors[index], work.n_tokens[index] = vector, count
        work.missing = [index for index in range(len(unique)) if index not in found]
        stats.cached += int(np.isin(slots, list(found)).sum()) if found else 0
        stats.stage_seconds["cache"] += time.perf_counter() - started
    if work.missing:
        encoder = source.encoder()  # loaded on the first miss; its load time is reported apart
        work.plan = source.plan(plan)  # now with the backend's batch shape
        started = time.perf_counter()
        work.tokens = encoder.tokenize([unique[index] for index in work.missing])
        work.n_tokens[work.missing] = work.tokens.n_tokens
        work.batches = work.plan.cut(work.tokens.lengths)
        stats.stage_seconds["tokenize"] += time.perf_counter() - started
    return work


def finish_texts(
    work: TextWork,
    source: ModelSource,
    stats: EncodeStats,
    *,
    check_stop: Callable[[], None] = lambda: None,
    on_batch: Callable[[float], None] | None = None,
    name_row: Callable[[int], str] | None = None,
) -> np.ndarray:
    """Encode what prepare_texts left, store it in the cache, and return one vector per row of the window.

    `name_row` names a row of the window (by its position) in an error about it.
    """
    if work.tokens is not None:
        tokens = work.tokens
        done = 0
        # A forward pass on a CPU leaves its activations' holes in the host's heap; on a GPU they never were there.
        activations_on_host = source.info.device == "cpu"

        def after_batch(rows: int) -> None:
            nonlocal done
            check_stop()
            if activations_on_host:
                return_freed_memory()
            done += rows
            if on_batch is not None:
                on_batch(min(1.0, done / len(tokens)))

        def name_missing(index: int) -> str:
            position = int(np.flatnonzero(work.slots == work.missing[index])[0])
            return name_row(position) if name_row is not None else f"text {position + 1}"

        plan = source.plan(work.plan)
        batches = work.batches if plan == work.plan else plan.cut(tokens.lengths)  # the budget was cut since
        started = time.perf_counter()
        # Without cache hits the encoder writes into the window's own array: no second copy of its vectors.
        everything = len(work.missing) == len(work.texts)
        vectors = work.vectors if everything else np.zeros((len(tokens), source.info.dim), dtype=np.float32)
        embed_tokens(tokens, batches, vectors, source, plan, stats, after_batch=after_batch, name_row=name_missing)
        if not everything:
            work.vectors[work.missing] = vectors
        stats.stage_seconds["forward"] += time.perf_counter() - started
        stats.encoded += len(tokens)
        stats.real_tokens += int(tokens.lengths.sum())
        if source.cache is not None:
            started = time.perf_counter()
            missing_texts = [work.texts[index] for index in work.missing]
            source.cache.store(source.profile(), missing_texts, work.vectors[work.missing], tokens.n_tokens)
            stats.stage_seconds["cache"] += time.perf_counter() - started
    return work.vectors if len(work.texts) == len(work.slots) else work.vectors[work.slots]  # no repeats: rows are the texts


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the kernel (glibc's malloc_trim; nothing where the C library is another).

    glibc returns only the top of its heap by itself, and a forward pass's activations of many sizes leave
    free holes below long-lived blocks (oneDNN's kernels, created as new shapes come): on bert-base, 30,000
    rows peaked at 1.73 GiB, 0.4 GiB of it free memory. Called after every batch: it costs 0.2 ms, and no
    measurable time once the pages are faulted in again.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc
        return None


def embed_tokens(
    tokens: Tokenized,
    batches: list[np.ndarray],
    vectors: np.ndarray,
    source: ModelSource,
    plan: BatchPlan,
    stats: EncodeStats,
    *,
    after_batch: Callable[[int], None],
    name_row: Callable[[int], str],
) -> None:
    """Every tokenized text's vector into `vectors` [texts, dim], in their order.

    A batch that runs out of device memory halves the token budget for the rest of the run and what is left is
    re-cut; only a row that cannot fit alone fails the run. A row whose vector is not finite (an fp16
    overflow) is re-run at fp32, so no NaN or inf is ever written.
    """
    lengths = tokens.lengths

    def run_within_memory(encoder: Encoder, pending: list[np.ndarray], after_batch: Callable[[int], None]) -> None:
        while pending:
            ran = encoder.embed_batches(tokens, pending, vectors, after_batch)
            stats.batches += ran
            stats.padded_tokens += sum(int(lengths[rows].max()) * len(rows) for rows in pending[:ran])
            if ran == len(pending):
                return
            failed = pending[ran]
            longest = int(lengths[failed].max())
            if len(failed) == 1:
                raise ModelError(f"{name_row(int(failed[0]))}: out of GPU memory on this text alone ({longest} tokens); pass --max-length lower")
            source.cut_budget(longest * len(failed), stats)
            rest = np.concatenate(pending[ran:])
            pending = [rest[rows] for rows in source.plan(plan).cut(lengths[rest])]

    encoder = source.encoder()
    run_within_memory(encoder, batches, after_batch)
    overflowed = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if overflowed.size:
        fp32 = encoder.at_fp32()
        if fp32 is not encoder:
            run_within_memory(fp32, [overflowed[rows] for rows in source.plan(plan).cut(lengths[overflowed])], lambda rows: None)
            stats.fp32_rows += len(overflowed)
            overflowed = overflowed[~np.isfinite(vectors[overflowed]).all(axis=1)]
        if overflowed.size:
            raise ModelError(f"{name_row(int(overflowed[0]))}: the model's vector is not finite even at fp32; its weights may be damaged")


def embed_texts(texts: list[str], model: Encoder | ModelSource, plan: BatchPlan = BatchPlan()) -> np.ndarray:
    """Vectors for an in-memory list of texts (sim, evaluate, the Python API), in the list's order."""
    source = ModelSource.of(model)
    if not texts:
        return np.zeros((0, source.info.dim), dtype=np.float32)
    stats = EncodeStats()
    plan = plan.for_device(source.info.device)
    parts: list[np.ndarray] = []
    start = 0
    for window in iter_windows(texts, plan.chunk_size or len(texts)):
        work = prepare_texts(window, source, plan, stats)
        parts.append(finish_texts(work, source, stats, name_row=lambda position, start=start: _quoted(texts, start + position)))
        start += len(window)
    return np.concatenate(parts)


def _quoted(texts: list[str], index: int) -> str:
    text = texts[index]
    return f"text {index + 1} ('{text[:20]}{'...' if len(text) > 20 else ''}')"


def open_cache(path: str | None) -> VectorCache | None:
    """--cache PATH's cache, or None without one (the cache module, and SQLite, imported only for one)."""
    if path is None:
        return None
    from sbert_cli.cache import VectorCache

    return VectorCache(path)


def model_source(options: ModelOptions, cache_path: str | None, notice: Callable[[str], None] = on_stderr) -> ModelSource:
    """The model for sim and evaluate: described now, loaded only if the cache cannot answer."""
    # Looked up on the module at each call: the tests put a fake model in its place.
    return ModelSource.for_handle(encoders.open_model(options), open_cache(cache_path), notice)
