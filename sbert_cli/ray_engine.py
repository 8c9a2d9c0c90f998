"""--engine ray: the same job, readers, encoder and batching, run by Ray Data tasks and actors over many files."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sbert_cli.errors import SbertError, UsageError, first_line
from sbert_cli.io.manifest import create_layout
from sbert_cli.io.paths import DirectoryLayout
from sbert_cli.io.publish import spool_dir
from sbert_cli.io.storage import StorePath, arrow_filesystem, aws_environment, is_url, location, move
from sbert_cli.job import EncodeJob, RayOptions


@dataclass(frozen=True)
class RayResult:
    rows: int
    rejected: int
    shards: int
    seconds: float


def plan_resources(options: RayOptions, cores: int) -> int:
    """How many encoder actors to start; on a local Ray, their CPUs plus one for reading must fit the machine."""
    if options.address is not None:
        return options.workers or 1
    spare = cores - 1  # a reading task needs a CPU too, or the actors starve it and the job hangs
    per_worker = options.cpus_per_worker
    fitting = int(spare // per_worker) if per_worker > 0 else spare
    workers = options.workers or max(1, fitting)
    if workers * per_worker > spare:
        raise UsageError(
            f"--workers {workers} x --cpus-per-worker {per_worker:g} needs {workers * per_worker + 1:g} CPUs "
            f"with one for reading, and this machine has {cores}; pass --workers {max(1, fitting)}"
        )
    return workers


def read_files(batch: Any, job: EncodeJob, several: bool) -> Iterator[Any]:
    """Ray task: read whole files with sbert's own readers, yielding windows of (id, text); rejects go to files."""
    import pyarrow as pa

    from sbert_cli.batching import iter_windows
    from sbert_cli.io.readers import iter_rows, split_window
    from sbert_cli.io.writers import RejectsWriter

    rejects_dir = DirectoryLayout.at(job.output.path).rejects
    spool = spool_dir(job.output.path) if is_url(job.output.path) else None  # a store's rejects are uploaded from here
    if spool is not None:
        spool.mkdir(exist_ok=True)
    for path in batch.column("path").to_pylist():
        spec = replace(job.input, path=path, files=())  # one file, read as the job says (columns, quoting, encoding)
        rejects = RejectsWriter(str(rejects_dir / f"{_file_key(path)}.rejects.jsonl"), spool)
        try:
            for window in iter_windows(iter_rows(spec), window_rows(job)):
                good, bad = split_window(window, job.skip_bad_rows)
                rejects.add(bad)
                if not good:
                    continue
                # Without an id column, ids are row numbers, prefixed with the file's name when there are several.
                ids = [record.id if spec.id_column or not several else f"{location(path).name}:{record.row}" for record in good]
                yield pa.table({"id": ids, "text": [record.text for record in good]})
            rejects.finish()
        except BaseException:
            rejects.abort()
            raise


def window_rows(job: EncodeJob) -> int:
    """Rows a read task yields at a time and an actor encodes at a time: --chunk-size, or auto for the actors' device."""
    assert job.ray is not None
    from sbert_cli.plan import device_kind

    device = "cuda" if job.ray.gpus_per_worker else device_kind(job.model.device)
    return job.plan.for_device(device).chunk_size or 1


def _file_key(path: str) -> str:
    """A rejects file name per input: its stem plus a short hash of the full path (two folders may share stems)."""
    return f"{location(path).stem}-{hashlib.sha256(str(location(path).resolve()).encode()).hexdigest()[:8]}"


class EncodeBatches:
    """Ray actor: loads the model once, then encodes each block with sbert's batching and pooling."""

    def __init__(self, job: EncodeJob) -> None:
        from sbert_cli.embedding import model_source
        from sbert_cli.io.compact import VectorForm
        from sbert_cli.io.sinks import describe_vectors

        assert job.ray is not None
        self.job = job
        # On a CPU the forward pass gets the actor's share of cores, not the node's (ignored on a GPU).
        self.source = model_source(replace(job.model, threads=max(1, int(job.ray.cpus_per_worker))), None)
        self.source.encoder()  # loaded once, when the actor starts
        info = self.source.info
        self.plan = job.plan.for_device(info.device)
        # int8/uint8 need --calibration here (job.EncodeJob says so): every actor scales by the file's ranges.
        self.form = VectorForm.for_output(job.output.dtype, job.output.calibration, info.dim)
        self.metadata = describe_vectors(info, job.output.dtype) | self.form.metadata()

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        from sbert_cli.embedding import embed_texts
        from sbert_cli.io.parquet_out import embedding_array

        vectors = embed_texts(table.column("text").to_pylist(), self.source, self.plan)
        result = pa.table({"id": table.column("id"), "embedding": embedding_array(self.form.store(vectors), self.form.numpy_dtype)})
        return result.replace_schema_metadata(self.metadata)


@dataclass(frozen=True)
class RayPlan:
    """The files a Ray run reads and the actors it starts, decided before Ray starts."""

    inputs: tuple[str, ...]
    workers: int
    cores: int

    def where(self, options: RayOptions) -> str:
        return options.address or f"a local Ray with {self.cores} CPUs"


def plan_ray_job(job: EncodeJob) -> RayPlan:
    """The input's files (listed once, into the job) and the size of the actor pool."""
    from sbert_cli.model.device import available_cores

    assert job.ray is not None
    cores = available_cores()
    return RayPlan(tuple(file.path for file in job.input.files), plan_resources(job.ray, cores), cores)


def run_ray_job(job: EncodeJob, plan: RayPlan) -> RayResult:
    """Read -> encode (an actor pool) -> Parquet shards in the output directory; raises SbertError for user mistakes."""
    import time

    try:
        import ray
    except ImportError:
        raise UsageError("--engine ray needs Ray: pip install 'sbert-cli[ray]'") from None
    assert job.ray is not None
    layout = DirectoryLayout.at(job.output.path)
    create_layout(layout)
    if any(layout.data.iterdir()):
        raise UsageError(f"{layout.data}: is not empty; --engine ray writes into an empty directory")
    started = time.perf_counter()
    owns_ray = not ray.is_initialized()
    if owns_ray:
        target = {"num_cpus": plan.cores} if job.ray.address is None else {"address": job.ray.address}
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, **target)
    try:
        _write_dataset(job, plan, layout)
    except Exception as error:  # Ray wraps a worker's exception; ours carries the one-line message
        cause = _sbert_cause(error)
        if cause is not None:
            raise cause from None
        raise
    finally:
        if owns_ray:
            ray.shutdown()
    shards = sorted(layout.data.glob("*.parquet"))  # type: ignore[type-var]
    rows = sum(_parquet_rows(shard) for shard in shards)
    rejected = sum(path.read_text(encoding="utf-8").count("\n") for path in layout.rejects.glob("*.rejects.jsonl"))
    return RayResult(rows=rows, rejected=rejected, shards=len(shards), seconds=time.perf_counter() - started)


def _parquet_rows(path: Path | StorePath) -> int:
    import pyarrow.parquet as pq

    filesystem, where = arrow_filesystem(path)
    return int(pq.read_metadata(where, filesystem=filesystem).num_rows)


def _write_dataset(job: EncodeJob, plan: RayPlan, layout: DirectoryLayout) -> None:
    import ray
    import ray.data

    assert job.ray is not None
    # Ray logs a worker's failure with its whole traceback; sbert reports it in one line instead, and
    # Ray's full logs stay in its session directory (/tmp/ray/session_latest/logs).
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = ray.data.from_items([{"path": path} for path in plan.inputs])
    # Reading stays a task of its own (its CPU share differs from the actors', so Ray does not fuse the
    # two): its blocks then spread over all actors, even when the input is one large file.
    # Workers reach a store with the driver's AWS settings (endpoint, region, credentials), whatever started them.
    remote = {"runtime_env": {"env_vars": environment}} if (environment := aws_environment()) else {}
    read_kwargs = {"job": job, "several": len(plan.inputs) > 1}
    dataset = dataset.map_batches(read_files, batch_size=1, batch_format="pyarrow", fn_kwargs=read_kwargs, num_cpus=0.5, **remote)
    dataset = dataset.map_batches(
        EncodeBatches,
        fn_constructor_kwargs={"job": job},
        batch_size=window_rows(job),
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.workers),
        num_cpus=job.ray.cpus_per_worker,
        num_gpus=job.ray.gpus_per_worker or None,
        **remote,
    )
    # Ray writes each file in place, so it writes them into a staging folder of the state folder, and each
    # is published under its final name only once all are written: the output never holds a partial file.
    staging = layout.state / "staging"
    filesystem, target = arrow_filesystem(staging)
    where = {"filesystem": filesystem} if filesystem is not None else {}
    dataset.write_parquet(target, ray_remote_args=remote, **where, **_rows_per_file(dataset, job.shard_rows))
    for written in sorted(staging.glob("*.parquet")):  # type: ignore[type-var]
        move(written, layout.data / written.name)
    if staging.exists():
        staging.rmdir()


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
            return type(current)(first_line(current, limit=10_000))
        stack += [current.__context__, current.__cause__, getattr(current, "cause", None)]
    return None
