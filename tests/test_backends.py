"""Backends behind one interface: a backend added as one class plus one line in backends.BACKENDS runs `sbert encode`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from sbert_cli import backends
from sbert_cli.backends.base import Target
from sbert_cli.model.description import ModelDescription
from sbert_cli.model.tokens import Tokenized
from tests.conftest import SAMPLE_DATA, sample_texts
from tests.test_cli import error_of, read_output, run


class CountingBackend:
    """A backend of its own: each row's vector is (its token count, the sum of its ids, its first id after [CLS])."""

    name = "counting"
    batch_shape = None
    loaded: list[Target] = []

    def __init__(self, dim: int) -> None:
        self.dim = dim

    @classmethod
    def load(cls, model: ModelDescription, target: Target) -> CountingBackend:
        cls.loaded.append(target)
        return cls(model.info.dim)

    def embed_batches(self, tokens: Tokenized, batches: Sequence[np.ndarray], out: np.ndarray, after_batch: Callable[[int], None]) -> int:
        for rows in batches:
            ids, lengths = tokens.padded(rows, 0)
            out[rows] = counting_vectors(lengths, ids.sum(axis=1), ids[:, 1], self.dim)
            after_batch(len(rows))
        return len(batches)


def counting_vectors(lengths: np.ndarray, sums: np.ndarray, firsts: np.ndarray, dim: int) -> np.ndarray:
    """Each row's (token count, sum of ids, first id after [CLS]) repeated along its own vector."""
    features = np.stack([lengths, sums, firsts], axis=1).astype(np.float32)
    return np.tile(features, (1, -(-dim // 3)))[:, :dim]


def declines(model: ModelDescription, target: Target) -> None:
    """A backend that does not run this model: the next in line is tried."""
    return None


def encode(tmp_path: Path, model: Path, name: str):
    out = tmp_path / f"{name}.parquet"
    result = run("encode", SAMPLE_DATA / "sentences.jsonl", "-o", out, "--model", model, "--id-column", "id", "--precision", "fp32", "-q")
    return result, out


def test_a_backend_added_as_one_line_runs_encode(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    CountingBackend.loaded.clear()
    monkeypatch.setitem(backends.BACKENDS, "cpu", (CountingBackend.load, *backends.BACKENDS["cpu"]))
    result, out = encode(tmp_path, tiny_model_dir, "counting")
    assert result.exit_code == 0, result.output
    assert [target.device_kind for target in CountingBackend.loaded] == ["cpu"]
    ids, vectors = read_output(out, "")
    assert ids == [f"s{i:03d}" for i in range(1, len(sample_texts()) + 1)]
    # Every vector is the fake backend's, on its own row in input order: the row's token count, the sum of its ids and
    # its first id after [CLS], as transformers' own tokenizer of the model gives them (truncated at the model's 64).
    from transformers import AutoTokenizer

    tokenized = AutoTokenizer.from_pretrained(str(tiny_model_dir))(sample_texts(), truncation=True, max_length=64)["input_ids"]
    expected = counting_vectors(
        np.array([len(row) for row in tokenized]), np.array([sum(row) for row in tokenized]), np.array([row[1] for row in tokenized]), 32
    )
    np.testing.assert_array_equal(vectors, expected)


def test_a_backend_that_declines_passes_to_the_next(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain_result, plain = encode(tmp_path, tiny_model_dir, "plain")
    assert plain_result.exit_code == 0, plain_result.output
    monkeypatch.setitem(backends.BACKENDS, "cpu", (declines, *backends.BACKENDS["cpu"]))
    result, out = encode(tmp_path, tiny_model_dir, "declined")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_output(out, "")[1], read_output(plain, "")[1])


def test_no_backend_for_the_device_is_one_line(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(backends.BACKENDS, "cpu", (declines,))
    result, out = encode(tmp_path, tiny_model_dir, "none")
    assert result.exit_code == 1
    assert error_of(result) == f"sbert: error: {tiny_model_dir}: no backend runs this model on cpu; pass another --device"
    assert not out.exists()


def test_each_device_tries_the_bert_backends_then_transformers() -> None:
    from sbert_cli.backends.automodel import TransformersModel
    from sbert_cli.backends.cuda import CudaBert
    from sbert_cli.backends.onednn import OneDnnBert
    from sbert_cli.backends.openvino_bert import OpenVinoBert
    from sbert_cli.backends.openvino_int8 import OpenVinoInt8Bert

    # --precision int8's loader first everywhere: it runs int8 or refuses it in one line, so no other backend sees it.
    int8 = OpenVinoInt8Bert.load
    cpu, cuda = (int8, OpenVinoBert.load, OneDnnBert.load, TransformersModel.load), (int8, CudaBert.load, TransformersModel.load)
    assert backends.BACKENDS == {"cpu": cpu, "cuda": cuda}
    openvino = (int8, OpenVinoBert.load_chosen)
    assert backends.CHOSEN == {"openvino": {"cpu": openvino, "cuda": openvino}, "torch": {"cpu": (int8, *cpu[2:]), "cuda": cuda}}
