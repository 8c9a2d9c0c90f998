"""A first run with a new model says what its one-time steps do (what, why, that it is once, where it is kept) and how
long they took, and counts only encoding in its rows/s; the second run says nothing of them; -q says nothing at all."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.test_cli import run

pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install -e '.[openvino]'")


@pytest.fixture
def model_copy(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """The tiny BERT in a folder of this test's own, never converted nor its tokenizer saved."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model", ignore=shutil.ignore_patterns("sbert-openvino", "sbert-tokenizer")))


def test_a_first_run_says_what_its_one_time_steps_do(model_copy: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in ["今天天气很好", "退款"]), encoding="utf-8")
    args = ["encode", source, "-o", tmp_path / "out.parquet", "--model", model_copy, "--device", "cpu", "--backend", "openvino"]
    first = run(*args)
    assert first.exit_code == 0, first.stderr
    lines = first.stderr.strip().splitlines()
    assert lines[0] == f"sbert: first run with {model_copy}: preparing it once for later runs (one-time steps below)"  # said before any import
    conversion = [line for line in lines if "OpenVINO" in line]
    (folder,) = (model_copy / "sbert-openvino").iterdir()
    assert conversion[0] == (
        f"sbert: converting the model to OpenVINO's format, which runs it faster on this CPU: a one-time step for this model, kept in "
        f"{folder} for later runs"
    )
    assert re.fullmatch(r"sbert: converting the model to OpenVINO's format, which runs it faster on this CPU: done in \d+\.\d s", conversion[1])
    assert any(line.startswith("sbert: saving the model's tokenizer") for line in lines)
    summary = re.fullmatch(r"sbert: 2 rows, dim \d+, \w+ on cpu, ([\d.]+) s \(([\d.]+) s of it a one-time step\), ([\d.]+) rows/s, .*", lines[-1])
    assert summary is not None, lines[-1]
    seconds, one_time, rate = (float(value) for value in summary.groups())
    assert 0 < one_time <= seconds
    assert rate > 2 / seconds  # over the encoding's seconds alone, not the whole run's

    second = run(*args)
    assert second.exit_code == 0, second.stderr
    assert "one-time" not in second.stderr and "first run" not in second.stderr and "converting" not in second.stderr and "saving" not in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1  # the summary alone

    shutil.rmtree(model_copy / "sbert-openvino")
    quiet = run(*args, "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""  # converted again, silently
