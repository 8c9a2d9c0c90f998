"""--engine ray: the same job, readers, encoder and batching, run by Ray Data tasks and actors over many files."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbert_cli import errors
from sbert_cli.errors import ClusterError, SbertError, UsageError, first_line
from sbert_cli.io.output import open_output
from sbert_cli.io.paths import DirectoryLayout
from sbert_cli.io.publish import TEMPORARY_MARK
from sbert_cli.io.storage import StorePath, arrow_filesystem, aws_environment, move
from sbert_cli.job import EncodeJob, RayOptions
from sbert_cli.ray_tasks import EncodeBatches, read_files, window_rows
from sbert_cli.words import plural


@dataclass(frozen=True)
class RayResult:
    rows: int
    rejected: int
    shards: int
    seconds: float
    repeated_ids: str | None = None  # --id-column ids that repeat, kept under --on-error skip


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


def run_ray_job(job: EncodeJob, plan: RayPlan, notice: Callable[[str], None] = lambda message: None, verbose: bool = False) -> RayResult:
    """Read -> encode (an actor pool) -> Parquet shards in the output directory; raises SbertError for user mistakes
    and for a cluster that cannot be reached or is lost (one line each)."""
    import time

    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError("--engine ray needs Ray: pip install 'sbert-cli[ray]'") from None
    from sbert_cli.ray_cluster import ray_session

    assert job.ray is not None
    job = for_workers(job)
    layout = DirectoryLayout.at(job.output.path)
    started = time.perf_counter()
    # The output held as the local engine holds it (a lock, or a lease in a store), and a killed run's leftovers
    # removed; then Ray started or joined.
    with open_output(job.output, job.run_settings, notice), ray_session(job.ray.address, plan.cores, verbose, notice) as watch:
        if any(name for name in _names(layout.data)):
            raise UsageError(f"{layout.data}: is not empty; --engine ray writes into an empty directory")
        notice(f"sbert: encoding {plural(len(plan.inputs), 'file')} with {plural(plan.workers, 'worker')} on {plan.where(job.ray)}")
        try:
            repeated = _write_dataset(job, plan, layout)
        except KeyboardInterrupt:
            if watch.lost:
                raise ClusterError(
                    f"the Ray cluster at {job.ray.address} stopped answering mid-run; nothing of this run was published "
                    "(its staged files are removed); run the same command again once the cluster is back"
                ) from None
            raise
        except Exception as error:  # Ray wraps a worker's exception; ours carries the one-line message
            raise worker_error(error) from None
    shards = sorted(layout.data.glob("*.parquet"))  # type: ignore[type-var]
    rows = sum(_parquet_rows(shard) for shard in shards)
    rejected = sum(path.read_text(encoding="utf-8").count("\n") for path in layout.rejects.glob("*.rejects.jsonl"))
    return RayResult(rows=rows, rejected=rejected, shards=len(shards), seconds=time.perf_counter() - started, repeated_ids=repeated)


def for_workers(job: EncodeJob) -> EncodeJob:
    """The job as workers on other machines take it: a model folder by its absolute path (a worker's working
    directory is not the driver's), marked as a path, so a node without it says so."""
    import os
    from dataclasses import replace

    assert job.ray is not None
    model = job.model.model
    if not os.path.isdir(model):
        return job
    return replace(job, model=replace(job.model, model=os.path.abspath(model)), ray=replace(job.ray, model_is_path=True))


def _names(folder: Path | StorePath) -> list[str]:
    """What the output directory holds, bar sbert's own temporaries (the next run's to remove)."""
    if not folder.exists():
        return []
    return [path.name for path in folder.iterdir() if TEMPORARY_MARK not in path.name]


def _parquet_rows(path: Path | StorePath) -> int:
    import pyarrow.parquet as pq

    filesystem, where = arrow_filesystem(path)
    return int(pq.read_metadata(where, filesystem=filesystem).num_rows)


def _write_dataset(job: EncodeJob, plan: RayPlan, layout: DirectoryLayout) -> str | None:
    import ray
    import ray.data

    assert job.ray is not None
    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = ray.data.from_items([{"path": path} for path in plan.inputs])
    # Reading stays a task of its own (its CPU share differs from the actors', so Ray does not fuse the
    # two): its blocks then spread over all actors, even when the input is one large file.
    # Workers reach a store with the driver's AWS settings (endpoint, region, credentials), whatever started them.
    remote = {"runtime_env": {"env_vars": environment}} if (environment := aws_environment()) else {}
    read_kwargs = {"job": job}
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
    remove_staging(staging)  # what a killed run staged (the output is held: no live run's)
    filesystem, target = arrow_filesystem(staging)
    where = {"filesystem": filesystem} if filesystem is not None else {}
    try:
        dataset.write_parquet(target, ray_remote_args=remote, **where, **_rows_per_file(dataset, job.shard_rows))
        staged = sorted(staging.glob("*.parquet"))  # type: ignore[type-var]
        repeated = _repeated_ids(job, staged)
        for written in staged:
            move(written, layout.data / written.name)
    finally:
        remove_staging(staging)  # a failed run's staged files go; a successful one's folder is empty by now
    return repeated


def remove_staging(staging: Path | StorePath) -> None:
    """The staging folder (prefix) and whatever it holds."""
    import shutil

    if isinstance(staging, StorePath):
        filesystem, where = arrow_filesystem(staging)
        try:
            filesystem.delete_dir(where)
        except OSError:
            pass  # absent
        return
    shutil.rmtree(staging, ignore_errors=True)


def _repeated_ids(job: EncodeJob, staged: list[Path | StorePath]) -> str | None:
    """--id-column ids that repeat across the whole output, read back from the staged files (the id column only)
    before any is published: under --on-error fail the run fails as the local engine's does, publishing nothing."""
    import pyarrow.parquet as pq

    from sbert_cli.repeated_ids import RepeatedIds, repeated_error

    if job.input.id_column is None:
        return None  # row ids (path:row) are unique by construction
    repeats = RepeatedIds()
    for path in staged:
        filesystem, where = arrow_filesystem(path)
        for batch in pq.ParquetFile(where, filesystem=filesystem).iter_batches(columns=["id"]):
            repeats.add(batch.column(0).to_pylist())
    if repeats.count and not job.skip_bad_rows:
        raise repeated_error(job.input.name, repeats)
    return repeats.shown() if repeats.count else None


def _rows_per_file(dataset: Any, shard_rows: int) -> dict[str, int]:
    """write_parquet's row cap: max_rows_per_file in current Ray, min_rows_per_file before it existed."""
    import inspect

    parameters = inspect.signature(dataset.write_parquet).parameters
    return {"max_rows_per_file": shard_rows} if "max_rows_per_file" in parameters else {"min_rows_per_file": shard_rows}


def worker_error(error: BaseException) -> BaseException:
    """A failure inside Ray as one line: sbert's own error from a task or actor, a worker that cannot import sbert,
    or else Ray's first line."""
    cause = _sbert_cause(error)
    if cause is not None:
        return cause
    text = str(error)
    if "No module named 'sbert_cli" in text:
        node = re.search(r"ip=([0-9a-fA-F.:]+)", text)
        where = f"on Ray node {node.group(1)}" if node else "on a Ray node"
        return ClusterError(
            f"a Ray worker {where} cannot import sbert (No module named 'sbert_cli'); install it there too "
            "(pip install 'sbert-cli[ray]' on every node, or the same image for every node)"
        )
    if isinstance(error, SbertError):
        return error
    # An actor whose constructor raised dies; Ray carries the error back as text only.
    raised = re.search(r"sbert_cli\.errors\.(\w+): (.+)", text)
    if raised is not None:
        kind = getattr(errors, raised.group(1), None)
        if isinstance(kind, type) and issubclass(kind, SbertError):
            return kind(raised.group(2).strip())
    return ClusterError(f"the Ray job failed: {first_line(error)}; Ray's logs are in its session folder (/tmp/ray/session_latest/logs)")


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
