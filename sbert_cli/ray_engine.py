"""--engine ray: the same job, readers, encoder and batching, run by Ray Data tasks and actors over many files."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sbert_cli import errors
from sbert_cli.errors import ClusterError, SbertError, UsageError, first_line
from sbert_cli.io.manifest import Manifest, identify_input, load_manifest, prepare_directory, save_manifest
from sbert_cli.io.output import open_output
from sbert_cli.io.paths import DirectoryLayout
from sbert_cli.ray_rounds import Round, finished_rounds, how_far, listed_rounds, next_shard_number, plan_rounds, recorded_options, round_bytes, shard_entry
from sbert_cli.repeated_ids import RepeatedIds, repeated_error
from sbert_cli.io.storage import StorePath, arrow_filesystem, aws_environment, move, remove_tree
from sbert_cli.job import EncodeJob, RayOptions
from sbert_cli.ray_tasks import EncodeBatches, read_files, rejects_name, window_rows
from sbert_cli.words import plural


@dataclass(frozen=True)
class RayResult:
    rows: int
    rejected: int
    shards: int
    seconds: float
    repeated_ids: str | None = None  # --id-column ids that repeat, kept under --on-error skip
    resumed_rows: int = 0  # rows an earlier run published (--resume)
    rounds: int = 0
    rounds_before: int = 0  # rounds an earlier run finished
    nothing_to_do: bool = False  # --resume on a complete output


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


def per_gpu(options: RayOptions, gpus: int) -> RayOptions:
    """Several GPUs on this machine, a local Ray and no --workers or --gpus-per-worker: an actor per GPU, each
    reserving one (Ray gives each its own CUDA_VISIBLE_DEVICES), so the rows' blocks spread over every GPU. A
    cluster's GPUs are not this machine's to count: there --workers and --gpus-per-worker say it."""
    if options.address is not None or options.workers is not None or options.gpus_per_worker or gpus < 2:
        return options
    return replace(options, workers=gpus, gpus_per_worker=1.0)


def visible_gpus() -> int:
    """The GPUs CUDA shows this process (none without a CUDA build of torch)."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # a broken driver reads as no GPU: the run goes on on the CPU, as the local engine's would
        return 0


@dataclass(frozen=True)
class RayPlan:
    """The files a Ray run reads and the actors it starts, decided before Ray starts."""

    inputs: tuple[str, ...]
    workers: int
    cores: int
    options: RayOptions = RayOptions()  # --workers and --gpus-per-worker as planned (an actor per GPU by default)

    def where(self, options: RayOptions) -> str:
        gpus = f", an actor per GPU" if self.options.gpus_per_worker == 1 and options.workers is None and options.address is None else ""
        return (options.address or f"a local Ray with {self.cores} CPUs") + gpus


def plan_ray_job(job: EncodeJob, gpus: int | None = None) -> RayPlan:
    """The input's files (listed once, into the job) and the size of the actor pool."""
    from sbert_cli.model.device import available_cores

    assert job.ray is not None
    cores = available_cores()
    options = per_gpu(job.ray, visible_gpus() if gpus is None else gpus)
    return RayPlan(tuple(file.path for file in job.input.files), plan_resources(options, cores), cores, options)


def actor_pool(plan: RayPlan) -> dict[str, Any]:
    """The encoder actors' pool and what each reserves, as map_batches takes them."""
    import ray.data

    return {
        "compute": ray.data.ActorPoolStrategy(size=plan.workers),
        "num_cpus": plan.options.cpus_per_worker,
        "num_gpus": plan.options.gpus_per_worker or None,
    }


def run_ray_job(job: EncodeJob, plan: RayPlan, notice: Callable[[str], None] = lambda message: None, verbose: bool = False) -> RayResult:
    """Read -> encode (an actor pool) -> Parquet shards in the output directory, round by round (ray_rounds), each
    published and recorded once whole; raises SbertError for user mistakes and for a cluster that cannot be reached
    or is lost (one line each)."""
    import time

    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError("--engine ray needs Ray: pip install 'sbert-cli[ray]'") from None
    from sbert_cli.ray_cluster import check_room, ray_session

    assert job.ray is not None
    job = for_workers(replace(job, ray=replace(plan.options, model_is_path=False)))
    started = time.perf_counter()
    # The output held as the local engine holds it (a lock, or a lease in a store), a killed run's leftovers removed,
    # and what an earlier run finished read from its manifest; then Ray started or joined.
    with open_output(job.output, job.run_settings, notice) as output:
        progress = _Progress.of(job, output)
        if progress.manifest.complete:
            return RayResult(0, 0, 0, 0.0, nothing_to_do=True)
        try:
            with ray_session(job.ray.address, plan.cores, verbose, notice) as watch:
                if watch.address is not None:  # a named cluster (auto resolved); a local Ray was sized by plan_resources
                    check_room(watch.address, plan.workers, plan.options.cpus_per_worker, plan.options.gpus_per_worker)
                notice(f"sbert: encoding {plural(len(plan.inputs), 'file')} with {plural(plan.workers, 'worker')} on {plan.where(job.ray)}")
                try:
                    progress.run(job, plan, output.check)
                except KeyboardInterrupt:
                    if watch.lost:
                        raise ClusterError(
                            f"the Ray cluster at {job.ray.address} stopped answering mid-run; {how_far(job, progress.layout, progress.manifest)}"
                        ) from None
                    raise
                except Exception as error:  # Ray wraps a worker's exception; ours carries the one-line message
                    raise worker_error(error) from None
        finally:
            progress.forget_if_empty()
    return RayResult(
        rows=progress.rows_now, rejected=progress.rejected_now(plan.inputs), shards=progress.shards_now, seconds=time.perf_counter() - started,
        repeated_ids=progress.repeats.shown() if progress.repeats.count else None, resumed_rows=progress.rows_before,
        rounds=len(progress.rounds), rounds_before=len(progress.done_before),
    )


class _Progress:
    """A Ray run's rounds against the output's manifest: which are done, and publishing the rest one by one."""

    def __init__(self, job: EncodeJob, layout: DirectoryLayout, manifest: Manifest, rounds: list[Round], done: set[int]) -> None:
        self.layout, self.manifest, self.rounds, self.done_before = layout, manifest, rounds, frozenset(done)
        self.done = set(done)
        self.rows_before = sum(entry.rows for entry in manifest.shards)
        self.rows_now = self.shards_now = 0
        self.repeats = RepeatedIds()
        if job.input.id_column is not None:  # the ids published before count against this run's
            for entry in manifest.shards:
                self.repeats.add(_ids(layout.data / entry.file))

    @classmethod
    def of(cls, job: EncodeJob, output: Any) -> _Progress:
        layout = output.layout
        size = round_bytes()
        listed = listed_rounds(output.earlier)
        manifest = prepare_directory(layout, output.earlier, identify_input(job.input.files), recorded_options(job, size), job.resume, job.overwrite)
        rounds = plan_rounds(job.input.files, size)
        done = finished_rounds(rounds, listed, manifest)
        listed_files = {entry.file for entry in manifest.shards}
        for path in layout.data.glob("part-*.parquet"):  # a round redone whole: its surviving shards go first
            if path.name not in listed_files:
                path.unlink()
        return cls(job, layout, manifest, rounds, done)

    def run(self, job: EncodeJob, plan: RayPlan, check: Callable[[], None]) -> None:
        for round_ in self.rounds:
            if round_.index in self.done:
                continue
            files = plan.inputs[round_.first:round_.end]
            staged = _write_dataset(job, plan, self.layout, files)
            try:
                counts = [_parquet_rows(path) for path in staged]
                if job.input.id_column is not None:
                    for path in staged:
                        self.repeats.add(_ids(path))
                    if self.repeats.count and not job.skip_bad_rows:
                        raise repeated_error(job.input.name, self.repeats)
                check()  # still this run's output (a store's lease), before anything is published
                number = next_shard_number(self.manifest)
                for offset, (path, rows) in enumerate(zip(staged, counts)):
                    final = self.layout.data / f"part-{number + offset:05d}.parquet"
                    move(path, final)
                    self.manifest.shards.append(shard_entry(final, round_, rows))
            finally:
                remove_tree(self.layout.state / "staging")
            save_manifest(self.layout, self.manifest)  # the round is recorded only once all its shards are published
            self.done.add(round_.index)
            self.rows_now += sum(counts)
            self.shards_now += len(staged)
        check()
        self.manifest.complete = True
        save_manifest(self.layout, self.manifest)

    def rejected_now(self, inputs: tuple[str, ...]) -> int:
        """The rows this run rejected, as `rows_now` counts those it encoded: the rejects of the files of the rounds
        it ran (a redone round's files are written anew); an earlier run's stay in the folder and were its own."""
        total = 0
        for round_ in self.rounds:
            if round_.index in self.done_before:
                continue
            for path in inputs[round_.first:round_.end]:
                rejects = self.layout.rejects / rejects_name(path)
                total += rejects.read_text(encoding="utf-8").count("\n") if rejects.exists() else 0
        return total

    def forget_if_empty(self) -> None:
        """A run that published nothing leaves no manifest, so the output's folders go too (open_output)."""
        if not self.manifest.shards and not self.manifest.complete:
            self.layout.manifest.unlink(missing_ok=True)


def clean_after_driver(job: EncodeJob) -> None:
    """What a driver that Ray ended left: its staging folder, and a manifest (and folders) that list nothing."""
    import os

    layout = DirectoryLayout.at(job.output.path)
    with open_output(job.output, job.run_settings, lambda message: None):
        remove_tree(layout.state / "staging")
        manifest = load_manifest(layout.manifest)
        if manifest is None or manifest.shards:
            return
        layout.manifest.unlink(missing_ok=True)
        if isinstance(layout.data, Path):
            try:
                os.remove(layout.lock)  # type: ignore[arg-type]  (held: no other run can be using it)
                for folder in (layout.rejects, layout.state, layout.data):
                    os.rmdir(folder)  # type: ignore[arg-type]
            except OSError:
                pass  # not empty: a rejects file; left as the local engine leaves it


def _ids(path: Path | StorePath) -> list[Any]:
    import pyarrow.parquet as pq

    filesystem, where = arrow_filesystem(path)
    return pq.read_table(where, columns=["id"], filesystem=filesystem).column("id").to_pylist()


def for_workers(job: EncodeJob) -> EncodeJob:
    """The job as workers on other machines take it: a model folder by its absolute path (a worker's working
    directory is not the driver's), marked as a path, so a node without it says so."""
    import os

    assert job.ray is not None
    model = job.model.model
    if not os.path.isdir(model):
        return job
    return replace(job, model=replace(job.model, model=os.path.abspath(model)), ray=replace(job.ray, model_is_path=True))


def _parquet_rows(path: Path | StorePath) -> int:
    import pyarrow.parquet as pq

    filesystem, where = arrow_filesystem(path)
    return int(pq.read_metadata(where, filesystem=filesystem).num_rows)


def _write_dataset(job: EncodeJob, plan: RayPlan, layout: DirectoryLayout, files: tuple[str, ...]) -> list[Path | StorePath]:
    """One round's files read, encoded and written as Parquet into the state folder's staging folder; returns them."""
    import ray
    import ray.data

    assert job.ray is not None
    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = ray.data.from_items([{"path": path} for path in files])
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
        **actor_pool(plan),
        **remote,
    )
    # Ray writes each file in place, so it writes them into a staging folder of the state folder, and each
    # is published under its final name only once all are written: the output never holds a partial file.
    staging = layout.state / "staging"
    remove_tree(staging)  # what a killed run staged (the output is held: no live run's)
    filesystem, target = arrow_filesystem(staging)
    where = {"filesystem": filesystem} if filesystem is not None else {}
    try:
        dataset.write_parquet(target, ray_remote_args=remote, **where, **_rows_per_file(dataset, job.shard_rows))
    except BaseException:
        remove_tree(staging)
        raise
    return sorted(staging.glob("*.parquet"))  # type: ignore[type-var]


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
