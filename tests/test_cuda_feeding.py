"""The CUDA backend's code on CPU tensors (CI has no GPU): padding, the BERT on torch's plain operations, pooling on
the device and input order come out equal to the plain path and to sentence-transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbert_cli.backends.cuda import device_bert
from sbert_cli.backends.feeding import DeviceFeeder, Staging
from sbert_cli.backends.weights import read_weights
from sbert_cli.encoder import TransformerEncoder, load_encoder
from sbert_cli.model.tokens import Tokenized
from sbert_cli.plan import BatchPlan
from sbert_cli.similarity import cosine_rows
from tests.conftest import sample_texts
from tests.test_encoder import MIXED_TEXTS, reference_vectors
from tests.test_pressure import ForwardLog, OutOfMemoryAbove


def loop_padded(ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Padding the obvious way, a row at a time."""
    longest = max(len(row) for row in ids)
    padded = np.full((len(ids), longest), pad_id, dtype=np.int64)
    for i, row in enumerate(ids):
        padded[i, : len(row)] = row
    return padded, np.asarray([len(row) for row in ids])


@settings(max_examples=200, deadline=None)
@given(
    ids=st.lists(st.lists(st.integers(min_value=1, max_value=21127), min_size=1, max_size=40), min_size=1, max_size=30),
    data=st.data(),
)
def test_numpy_padding_equals_the_row_loop(ids: list[list[int]], data: st.DataObject) -> None:
    tokens = Tokenized.from_lists(ids)
    rows = np.asarray(data.draw(st.lists(st.integers(0, len(ids) - 1), min_size=1, max_size=len(ids), unique=True)))
    padded, lengths = tokens.padded(rows, pad_id=0)
    expected, expected_lengths = loop_padded([ids[row] for row in rows], 0)
    assert padded.dtype == np.int32
    np.testing.assert_array_equal(padded, expected)
    np.testing.assert_array_equal(lengths, expected_lengths)
    assert tokens.ids == ids and Tokenized.concat([tokens, tokens]).ids == ids + ids


def feeder_for(encoder: TransformerEncoder, model_dir: Path) -> DeviceFeeder:
    """The CUDA path's BERT and feeding, built from the same checkpoint on the CPU at fp32."""
    import torch

    forward = device_bert(read_weights(encoder.model.layout.transformer_dir), encoder.model.config, torch.float32, torch.device("cpu"))
    return DeviceFeeder(forward, encoder.target)  # the plain path's target: CPU, its pooling and head


def run_feeder(feeder: DeviceFeeder, tokens: Tokenized, batches: list[np.ndarray], dim: int) -> np.ndarray:
    out = np.full((len(tokens), dim), np.nan, dtype=np.float32)
    seen: list[int] = []
    assert feeder.run(tokens, batches, out, seen.append) == len(batches)
    assert seen == [len(rows) for rows in batches]  # told after every batch, for progress and stop checks
    return out


@pytest.mark.parametrize("model", ["tiny", pytest.param("minilm", marks=pytest.mark.slow)])
def test_cuda_feeding_equals_the_plain_path(model: str, tiny_model_dir: Path, minilm_dir: Path) -> None:
    model_dir = tiny_model_dir if model == "tiny" else minilm_dir
    encoder = load_encoder(str(model_dir), device="cpu", precision="fp32")
    texts = MIXED_TEXTS + sample_texts()
    tokens = encoder.tokenize(texts)
    batches = BatchPlan(batch_size=5, max_tokens=600).for_device("cpu").cut(tokens.lengths)
    batches = batches[::-1]  # any order of batches: vectors still land on their rows
    plain = np.zeros((len(texts), encoder.info.dim), dtype=np.float32)
    assert encoder.embed_batches(tokens, batches, plain, lambda rows: None) == len(batches)
    fed = run_feeder(feeder_for(encoder, model_dir), tokens, batches, encoder.info.dim)
    np.testing.assert_allclose(fed, plain, atol=2e-5)
    if model == "minilm":  # real weights, normalised: the same vectors as sentence-transformers
        assert cosine_rows(fed, reference_vectors(model_dir, texts)).min() >= 0.99999


def test_cuda_feeding_pools_every_mode_like_the_plain_path(tmp_path: Path, tiny_model_dir: Path) -> None:
    import json
    import shutil

    for mode, key in (("cls", "pooling_mode_cls_token"), ("max", "pooling_mode_max_tokens"), ("mean_sqrt_len", "pooling_mode_mean_sqrt_len_tokens")):
        model_dir = tmp_path / mode
        shutil.copytree(tiny_model_dir, model_dir)
        config = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
        config["pooling_mode_mean_tokens"], config[key] = False, True
        (model_dir / "1_Pooling" / "config.json").write_text(json.dumps(config))
        encoder = load_encoder(str(model_dir), device="cpu", precision="fp32")
        tokens = encoder.tokenize(sample_texts())
        batches = BatchPlan(batch_size=4).for_device("cpu").cut(tokens.lengths)
        plain = np.zeros((len(tokens), encoder.info.dim), dtype=np.float32)
        encoder.embed_batches(tokens, batches, plain, lambda rows: None)
        np.testing.assert_allclose(run_feeder(feeder_for(encoder, model_dir), tokens, batches, encoder.info.dim), plain, atol=2e-5)


def test_cuda_feeding_stops_at_out_of_memory_with_the_batches_before_it_written(tiny_model_dir: Path) -> None:
    encoder = load_encoder(str(tiny_model_dir), device="cpu", precision="fp32")
    tokens = encoder.tokenize(sample_texts())
    batches = BatchPlan(batch_size=4).for_device("cpu").cut(tokens.lengths)[::-1]  # shortest first: some fit
    feeder = feeder_for(encoder, tiny_model_dir)
    expected = run_feeder(feeder, tokens, batches, encoder.info.dim)
    sizes = [int(tokens.lengths[rows].max()) * len(rows) for rows in batches]
    failing = next(index for index, size in enumerate(sizes) if size > min(sizes))  # the first batch over the smallest
    assert 0 < failing < len(batches)
    log = ForwardLog()
    feeder.forward = OutOfMemoryAbove(feeder.forward, min(sizes), log)
    out = np.full((len(tokens), encoder.info.dim), np.nan, dtype=np.float32)
    assert feeder.run(tokens, batches, out, lambda rows: None) == failing
    done = np.concatenate(batches[:failing])
    np.testing.assert_allclose(out[done], expected[done], atol=1e-6)
    untouched = np.setdiff1d(np.arange(len(tokens)), done)
    assert np.isnan(out[untouched]).all()  # nothing written for the batch that failed or those after it
    assert log.held and log.held[-1]() is None


def test_staging_on_a_cpu_device_hands_the_values_over() -> None:
    import torch

    staging = Staging(torch.device("cpu"))
    values = np.arange(10, dtype=np.int32)
    assert staging.to_device(values).tolist() == list(range(10))


def test_cuda_feeding_attends_without_cudnn_and_gives_the_setting_back(tiny_model_dir: Path) -> None:
    """cuDNN's attention builds a plan per new batch shape (tens of ms each on a GPU): the feeder leaves it out while
    it runs, and the process's own SDPA settings are as they were afterwards."""
    import torch

    encoder = load_encoder(str(tiny_model_dir), device="cpu", precision="fp32")
    tokens = encoder.tokenize(sample_texts())
    batches = BatchPlan(batch_size=4).for_device("cpu").cut(tokens.lengths)
    feeder = feeder_for(encoder, tiny_model_dir)
    forward, seen = feeder.forward, []

    def recording(input_ids, mask):
        seen.append((torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled()))
        return forward(input_ids, mask)

    feeder.forward = recording
    before = torch.backends.cuda.cudnn_sdp_enabled()
    run_feeder(feeder, tokens, batches, encoder.info.dim)
    assert seen == [(False, True, True)] * len(batches)
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
