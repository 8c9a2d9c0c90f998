"""--engine ray: the same readers, encoder and batching, run by Ray Data tasks and actors over many files."""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbert_cli.errors import SbertError, UsageError

_INPUT_SUFFIXES = {".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".parquet", ".pq"}


@dataclass(frozen=True)
class RayJob:
    """Everything a Ray worker needs to read, encode and write; plain data, so it pickles to any node."""

    inputs: tuple[str, ...]
    output: str
    format: str | None
    text_column: str
    id_column: str | None
    on_error: str
    model: str
    device: str
    precision: str
    max_length: int | None
    normalize: bool
    dtype: str
    chunk_size: int
    batch_size: int
    max_tokens: int
    shard_rows: int
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float


@dataclass(frozen=True)
class RayResult:
    rows: int
    rejected: int
    shards: int
    seconds: float


def expand_inputs(pattern: str) -> list[str]:
    """A file, a directory (its CSV/TSV/JSONL/Parquet files) or a glob, as a sorted list of files."""
    path = Path(pattern)
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in _INPUT_SUFFIXES)
        if not files:
            raise UsageError(f"{pattern}: no .csv, .tsv, .jsonl or .parquet files in this directory")
        return files
    files = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
    if not files:
        raise UsageError(f"{pattern}: no such file, directory or matching files; check the path")
    return files


def plan_resources(address: str | None, workers: int | None, cpus_per_worker: float, gpus_per_worker: float, cores: int) -> int:
    """How many encoder actors to start; on a local Ray, their CPUs plus one for reading must fit the machine."""
    if address is not None:
        return workers or 1
    spare = cores - 1  # a reading task needs a CPU too, or the actors starve it and the job hangs
    fitting = int(spare // cpus_per_worker) if cpus_per_worker > 0 else spare
    if workers is None:
        workers = max(1, fitting)
    if workers * cpus_per_worker > spare:
        raise UsageError(
            f"--workers {workers} x --cpus-per-worker {cpus_per_worker:g} needs {workers * cpus_per_worker + 1:g} CPUs "
            f"with one for reading, and this machine has {cores}; pass --workers {max(1, fitting)}"
        )
    return workers


def read_files(batch: Any, job: RayJob) -> Iterator[Any]:
    """Ray task: read whole files with sbert's own readers, yielding windows of (id, text); rejects go to files."""
    import pyarrow as pa

    from sbert_cli.batching import iter_windows
    from sbert_cli.readers import InputSpec, detect_format, iter_rows, split_window
    from sbert_cli.writers import RejectsWriter

    several = len(job.inputs) > 1
    if job.on_error == "skip":
        (Path(job.output) / "rejects").mkdir(parents=True, exist_ok=True)
    for path in batch.column("path").to_pylist():
        spec = InputSpec(path, detect_format(path, job.format), job.text_column, job.id_column)
        rejects = RejectsWriter(str(Path(job.output) / "rejects" / f"{_file_key(path)}.rejects.jsonl"))
        try:
            for window in iter_windows(iter_rows(spec), job.chunk_size):
                good, bad = split_window(window, job.on_error == "skip")
                rejects.add(bad)
                if not good:
                    continue
                # Without an id column, ids are row numbers, prefixed with the file's name when there are several.
                ids = [
                    record.id if job.id_column or not several else f"{Path(path).name}:{record.row}" for record in good
                ]
                yield pa.table({"id": ids, "text": [record.text for record in good]})
            rejects.finish()
        except BaseException:
            rejects.abort()
            raise


def _file_key(path: str) -> str:
    """A rejects file name per input: its stem plus a short hash of the full path (two folders may share stems)."""
    return f"{Path(path).stem}-{hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:8]}"


class EncodeBatches:
    """Ray actor: loads the model once, then encodes each block with sbert's batching and pooling."""

    def __init__(self, job: RayJob) -> None:
        import torch

        from sbert_cli.encoder import load_encoder
        from sbert_cli.pipeline import BatchPlan
        from sbert_cli.writers import describe_model

        self.job = job
        self.encoder = load_encoder(job.model, device=job.device, precision=job.precision, max_length=job.max_length, normalize=job.normalize)
        if self.encoder.info.device == "cpu":
            torch.set_num_threads(max(1, int(job.cpus_per_worker)))  # the actor's share, not the node's cores
        plan = BatchPlan(chunk_size=job.chunk_size, batch_size=job.batch_size, max_tokens=job.max_tokens)
        self.plan = plan.for_device(self.encoder.info.device)
        self.metadata = describe_model(self.encoder.info, job.dtype)

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        from sbert_cli.pipeline import embed_tokenized
        from sbert_cli.writers import embedding_array

        tokens = self.encoder.tokenize(table.column("text").to_pylist())
        vectors = embed_tokenized(tokens, self.encoder, self.plan)
        result = pa.table({"id": table.column("id"), "embedding": embedding_array(vectors, self.job.dtype)})
        return result.replace_schema_metadata(self.metadata)


def run_ray_job(job: RayJob, address: str | None, cores: int) -> RayResult:
    """Read -> encode (an actor pool) -> Parquet shards in job.output; raises SbertError for user mistakes."""
    import time

    try:
        import ray
    except ImportError:
        raise UsageError("--engine ray needs Ray: pip install 'sbert-cli[ray]'") from None
    out = Path(job.output)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("*.parquet")):
        raise UsageError(f"{out}: already holds Parquet files; --engine ray writes into an empty directory")
    started = time.perf_counter()
    owns_ray = not ray.is_initialized()
    if owns_ray:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        if address is None:
            kwargs["num_cpus"] = cores
        else:
            kwargs["address"] = address
        ray.init(**kwargs)
    try:
        import ray.data

        # Ray logs a worker's failure with its whole traceback; sbert reports it in one line instead, and
        # Ray's full logs stay in its session directory (/tmp/ray/session_latest/logs).
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        dataset = ray.data.from_items([{"path": path} for path in job.inputs])
        # Reading stays a task of its own (its CPU share differs from the actors', so Ray does not fuse the
        # two): its blocks then spread over all actors, even when the input is one large file.
        dataset = dataset.map_batches(read_files, batch_size=1, batch_format="pyarrow", fn_kwargs={"job": job}, num_cpus=0.5)
        dataset = dataset.map_batches(
            EncodeBatches,
            fn_constructor_kwargs={"job": job},
            batch_size=job.chunk_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=job.workers),
            num_cpus=job.cpus_per_worker,
            num_gpus=job.gpus_per_worker or None,
        )
        dataset.write_parquet(str(out), **_rows_per_file(dataset, job.shard_rows))
    except Exception as error:  # Ray wraps a worker's exception; ours carries the one-line message
        cause = _sbert_cause(error)
        if cause is not None:
            raise cause from None
        raise
    finally:
        if owns_ray:
            ray.shutdown()
    import pyarrow.parquet as pq

    shards = sorted(out.glob("*.parquet"))
    rows = sum(pq.read_metadata(shard).num_rows for shard in shards)
    rejected = sum(sum(1 for _ in open(path, encoding="utf-8")) for path in (out / "rejects").glob("*.rejects.jsonl"))
    return RayResult(rows=rows, rejected=rejected, shards=len(shards), seconds=time.perf_counter() - started)


def _rows_per_file(dataset: Any, shard_rows: int) -> dict[str, int]:
    """write_parquet's row cap: max_rows_per_file in current Ray, min_rows_per_file before it existed."""
    import inspect

    parameters = inspect.signature(dataset.write_parquet).parameters
    return {"max_rows_per_file": shard_rows} if "max_rows_per_file" in parameters else {"min_rows_per_file": shard_rows}


def _sbert_cause(error: BaseException) -> SbertError | None:
    """Our error inside Ray's wrappers (RayTaskError subclasses the cause's type, but its text is a traceback)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, SbertError) and "RayTaskError" not in type(current).__name__:
            # Ray appends retry advice to the message it carries back; the first line is ours.
            return type(current)(str(current).splitlines()[0])
        stack += [current.__context__, current.__cause__, getattr(current, "cause", None)]
    return None
