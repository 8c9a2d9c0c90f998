"""--engine ray's Ray tasks and actors: reading files with sbert's readers, and encoding blocks with its model."""

from __future__ import annotations

import hashlib
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from sbert_cli.errors import ModelError, SbertError
from sbert_cli.io.inputs import InputFile
from sbert_cli.io.paths import DirectoryLayout
from sbert_cli.io.storage import is_url, location
from sbert_cli.job import EncodeJob


def read_files(batch: Any, job: EncodeJob) -> Iterator[Any]:
    """Ray task: read whole files with sbert's own readers, yielding windows of (id, text); rejects go to files."""
    rejects_dir = DirectoryLayout.at(job.output.path).rejects
    # A store's rejects are written here, then uploaded: a folder of this task's own, removed when it ends.
    spool = Path(tempfile.mkdtemp(prefix="sbert-spool-")) if is_url(job.output.path) else None
    try:
        yield from _read(batch.column("path").to_pylist(), job, rejects_dir, spool)
    finally:
        if spool is not None:
            shutil.rmtree(spool, ignore_errors=True)


def _read(paths: list[str], job: EncodeJob, rejects_dir: Any, spool: Path | None) -> Iterator[Any]:
    import pyarrow as pa

    from sbert_cli.batching import iter_windows
    from sbert_cli.io.readers import iter_rows, split_window
    from sbert_cli.io.writers import RejectsWriter

    for path in paths:
        # One file, read as the job says (columns, quoting, encoding), its rows' ids named as the local engine names them.
        spec = replace(job.input, path=path, files=(InputFile(path, 0, 0),))
        rejects = RejectsWriter(str(rejects_dir / rejects_name(path)), spool)
        try:
            for window in iter_windows(iter_rows(spec), window_rows(job)):
                good, bad = split_window(window, job.skip_bad_rows)
                rejects.add(bad)
                if not good:
                    continue
                yield pa.table({"id": [record.id for record in good], "text": [record.text for record in good]})
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


def rejects_name(path: str) -> str:
    """An input file's rejects file: its stem plus a short hash of the full path (two folders may share stems)."""
    return f"{location(path).stem}-{hashlib.sha256(str(location(path).resolve()).encode()).hexdigest()[:8]}.rejects.jsonl"


class EncodeBatches:
    """Ray actor: loads the model once, then encodes each block with sbert's batching and pooling."""

    def __init__(self, job: EncodeJob) -> None:
        from sbert_cli.embedding import model_source
        from sbert_cli.io.compact import VectorForm
        from sbert_cli.io.sinks import describe_vectors

        assert job.ray is not None
        model = job.model.model
        if job.ray.model_is_path and not Path(model).exists():
            raise ModelError(
                f"--model {model}: no such folder on Ray node {_node()}; put the model at the same path on every node "
                "(or on storage they all mount), or pass a hub id"
            )
        try:
            # On a CPU the forward pass gets the actor's share of cores, not the node's (ignored on a GPU).
            self.source = model_source(replace(job.model, threads=max(1, int(job.ray.cpus_per_worker))), None)
            self.source.encoder()  # loaded once, when the actor starts
        except SbertError as error:
            raise type(error)(f"on Ray node {_node()}: {error}") from None
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


def _node() -> str:
    """The node an actor runs on, as the user knows it: its address."""
    try:
        import ray

        return str(ray.util.get_node_ip_address())
    except Exception:
        return socket.gethostname()
