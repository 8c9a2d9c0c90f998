"""run_encode is given its model opener: a fake passed in, nothing patched; and it asks the output which precision to open
the model at (a resumed directory keeps the one it started with)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.dataset
import pyarrow.parquet as pq

from sbert_cli.io.readers import Extent
from sbert_cli.job import EncodeJob, input_spec, output_target
from sbert_cli.model.description import ModelInfo
from sbert_cli.model.options import ModelOptions
from sbert_cli.pipeline import Hooks, run_encode
from sbert_cli.plan import BatchPlan
from tests.conftest import FakeEncoder, FakeHandle, expected_fake_vectors

TEXTS = ["今天天气很好", "明天会下雨吗", "a third one", "第四句"]


def make_job(source: Path, out: Path, **options) -> EncodeJob:
    model = options.pop("model", ModelOptions())
    job = EncodeJob(input=input_spec(str(source), None, "text", None), output=output_target(str(out), str(source), "float32"), model=model, plan=BatchPlan(), **options)
    job.refuse_overwrites()
    return job


def write_input(path: Path) -> Path:
    path.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in TEXTS), encoding="utf-8")
    return path


def test_run_encode_opens_the_model_it_is_given(tmp_path: Path) -> None:
    source, out = write_input(tmp_path / "in.jsonl"), tmp_path / "out.parquet"
    asked: list[ModelOptions] = []

    def opener(options: ModelOptions) -> FakeHandle:
        asked.append(options)
        return FakeHandle(FakeEncoder(record=False))

    job = make_job(source, out)
    report = run_encode(job, opener, Hooks(), Extent())
    assert asked == [job.model]  # opened once, with the job's own options
    assert report.stats.rows == len(TEXTS)
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == list(range(len(TEXTS)))
    np.testing.assert_array_equal(np.asarray(table.column("embedding").to_pylist(), dtype=np.float32), expected_fake_vectors(TEXTS))


def test_a_resumed_directory_opens_the_model_at_the_precision_it_started_with(tmp_path: Path) -> None:
    source, out = write_input(tmp_path / "in.jsonl"), tmp_path / "vecs"
    asked: list[str] = []

    def opener(options: ModelOptions) -> FakeHandle:
        """The model at the precision asked (auto: bf16, as a CPU with native bf16 would pick)."""
        asked.append(options.precision)
        encoder = FakeEncoder(record=False)
        precision = "bf16" if options.precision == "auto" else options.precision
        encoder.info = replace(encoder.info, precision=precision)
        return FakeHandle(encoder)

    first = make_job(source, out, shard_rows=2, model=ModelOptions(precision="bf16"))
    run_encode(first, opener, Hooks(), Extent())
    manifest = json.loads((tmp_path / "vecs.sbert" / "manifest.json").read_text())
    manifest["shards"], manifest["complete"] = manifest["shards"][:1], False  # as a run killed after its first shard leaves it
    (tmp_path / "vecs.sbert" / "manifest.json").write_text(json.dumps(manifest))
    (out / "part-00001.parquet").unlink()

    resumed = make_job(source, out, shard_rows=2, resume=True, model=ModelOptions(precision="auto"))
    report = run_encode(resumed, opener, Hooks(), Extent())
    assert asked == ["bf16", "bf16"]  # auto on resume became the precision the directory started with
    assert (report.stats.shards_written, report.stats.shards_resumed) == (1, 1)
    table = pyarrow.dataset.dataset(out).to_table()
    assert table.column("id").to_pylist() == list(range(len(TEXTS)))
    assert isinstance(report.info, ModelInfo) and report.info.precision == "bf16"


def test_a_row_lost_on_the_way_fails_the_run_and_publishes_nothing(tmp_path: Path, monkeypatch) -> None:
    """The accounting rule: rows read = written + rejected (+ an earlier run's); a reader that loses a row makes the
    run fail, never succeed with fewer rows."""
    import pytest

    from sbert_cli import pipeline
    from sbert_cli.errors import InputDataError

    source, out = write_input(tmp_path / "in.jsonl"), tmp_path / "out.parquet"
    real_rows = pipeline.iter_rows

    def losing_rows(spec, extent):
        return (item for item in real_rows(spec, extent) if item.row != 2)  # the third row vanishes

    monkeypatch.setattr(pipeline, "iter_rows", losing_rows)
    with pytest.raises(InputDataError) as failure:
        run_encode(make_job(source, out), lambda options: FakeHandle(FakeEncoder(record=False)), Hooks(), Extent())
    assert str(failure.value) == f"{source}: the reader skipped or repeated row 2; nothing more was published"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.jsonl"]
