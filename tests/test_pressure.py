"""Under pressure: a batch that runs out of GPU memory is cut smaller and the run goes on; no NaN or inf is written.

CI has no GPU, so the model's forward pass is wrapped to do what a GPU does: raise CUDA's out-of-memory
error above a token count (while holding a large tensor, as a half-done forward pass does), or return inf.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sbert_cli.encoder
from tests.conftest import sample_texts
from tests.test_cli import error_of, read_output, run

NOTICE = "out of GPU memory on a batch of"


@dataclass
class ForwardLog:
    calls: list[tuple[int, bool]] = field(default_factory=list)  # (tokens in the batch, whether it ran out of memory)
    held: list[weakref.ref] = field(default_factory=list)  # the tensors each failed try held
    alive_at_next_call: list[bool] = field(default_factory=list)  # whether any of them was still allocated then

    @property
    def failures(self) -> int:
        return sum(failed for _, failed in self.calls)


class OutOfMemoryAbove:
    """The real forward pass, except that a batch of more than `limit` tokens raises torch.cuda.OutOfMemoryError
    after allocating 32 MiB, as a forward pass that runs out of memory midway has allocated its activations."""

    def __init__(self, forward: Any, limit: float, log: ForwardLog) -> None:
        self.forward, self.limit, self.log = forward, limit, log

    def __call__(self, input_ids: Any, mask: Any) -> Any:
        import torch

        self.log.alive_at_next_call.append(any(ref() is not None for ref in self.log.held))
        tokens = input_ids.numel()
        if tokens > self.limit:
            activations = torch.empty(8 * 2**20)
            self.log.held.append(weakref.ref(activations))
            self.log.calls.append((tokens, True))
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {tokens * 3072 * 2} bytes")
        self.log.calls.append((tokens, False))
        return self.forward(input_ids, mask)


def wrap_forward(monkeypatch: pytest.MonkeyPatch, wrap: Any) -> None:
    """Every model the commands load in this test gets its backend's forward pass wrapped: wrap(forward, dtype)."""
    real = sbert_cli.encoder.load_backend

    def load_backend(model: Any, target: Any) -> Any:
        backend = real(replace(model, backend="torch"), target)  # torch's backends run a forward pass that can be wrapped
        backend.forward = wrap(backend.forward, target.dtype)
        return backend

    monkeypatch.setattr(sbert_cli.encoder, "load_backend", load_backend)


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": f"t{i}", "text": text}, ensure_ascii=False) + "\n" for i, text in enumerate(texts)), encoding="utf-8")
    return path


def encode(source: Path, out: Path, model: Path, *options: str):
    return run("encode", source, "-o", out, "--model", model, "--id-column", "id", "--precision", "fp32", "--chunk-size", "20", *options)


def test_out_of_memory_cuts_the_budget_once_and_the_run_completes(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", sample_texts() * 2)  # 76 rows: 4 windows of 20
    assert run("encode", source, "-o", tmp_path / "plain.parquet", "--model", tiny_model_dir, "--id-column", "id", "--precision", "fp32", "--chunk-size", "20", "-q").exit_code == 0
    log = ForwardLog()
    wrap_forward(monkeypatch, lambda forward, dtype: OutOfMemoryAbove(forward, 120, log))
    result = encode(source, tmp_path / "forced.parquet", tiny_model_dir, "--verbose")
    assert result.exit_code == 0, result.stderr
    # Vectors equal to a run that never ran out of memory, every row once, in input order.
    plain_ids, plain = read_output(tmp_path / "plain.parquet", "")
    forced_ids, forced = read_output(tmp_path / "forced.parquet", "")
    assert forced_ids == plain_ids
    np.testing.assert_allclose(forced, plain, atol=1e-5)
    # The failed tries' tensors were freed before anything else ran, the next try included.
    assert log.failures >= 1 and not any(log.alive_at_next_call)
    # Said once, although memory ran out more than once while the budget came down.
    assert result.stderr.count(NOTICE) == 1
    # The budget stays cut: once a batch fit, no later batch (in this window or the next three) ran out.
    first_fit = next(index for index, (_, failed) in enumerate(log.calls) if not failed)
    assert not any(failed for _, failed in log.calls[first_fit:])
    # Each failure cuts the budget to half the padded tokens of the batch that failed, and every batch run after a
    # cut holds at most the budget in force then: the quantities the notice and the timings name.
    budget = None
    for tokens, failed in log.calls:
        if failed:
            budget = tokens // 2 if budget is None else min(budget, tokens // 2)
        elif budget is not None:
            assert tokens <= budget, (tokens, budget, log.calls)
    first_failed = next(tokens for tokens, failed in log.calls if failed)
    assert f"{NOTICE} {first_failed:,} padded tokens; batches hold at most {first_failed // 2:,} padded tokens for the rest of the run" in result.stderr
    timings = result.stderr.strip().splitlines()[-1]
    assert f"out of device memory {log.failures} times, batches then cut to {budget} padded tokens" in timings


def test_a_text_that_cannot_fit_alone_fails_naming_its_row(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = ["好", "今天", "今天天气很好，我们去公园散步吧。", "好的"]
    source = write_jsonl(tmp_path / "in.jsonl", texts)
    log = ForwardLog()
    wrap_forward(monkeypatch, lambda forward, dtype: OutOfMemoryAbove(forward, 12, log))
    out = tmp_path / "out.parquet"
    result = encode(source, out, tiny_model_dir, "-q")
    assert result.exit_code == 1
    assert error_of(result) == f"sbert: error: {source}: row 2 (id t2): out of GPU memory on this text alone (18 tokens); pass --max-length lower"
    assert not out.exists() and not any(tmp_path.glob(".*parquet*"))
    assert not any(log.alive_at_next_call)


def test_sim_and_evaluate_recover_from_out_of_memory(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sentences = ["如何申请退款？", "怎么才能把钱退回来？", "今天的天气怎么样？"]
    plain = run("sim", *sentences, "--model", tiny_model_dir, "--precision", "fp32")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{a}\t{b}\t{i % 2}\n" for i, (a, b) in enumerate(zip(sample_texts(), sample_texts()[1:]))), encoding="utf-8")
    plain_scores = run("evaluate", pairs, "--model", tiny_model_dir, "--precision", "fp32", "--json")
    log = ForwardLog()
    limit = {"tokens": 20}  # the three sentences together (36 tokens) do not fit, each alone does
    wrap_forward(monkeypatch, lambda forward, dtype: OutOfMemoryAbove(forward, limit["tokens"], log))
    forced = run("sim", *sentences, "--model", tiny_model_dir, "--precision", "fp32")
    assert forced.exit_code == 0, forced.stderr
    assert forced.stdout == plain.stdout and forced.stderr.count(NOTICE) == 1
    limit["tokens"] = 70  # a pair file's batches do not fit; its longest text (64 tokens) does
    forced_scores = run("evaluate", pairs, "--model", tiny_model_dir, "--precision", "fp32", "--json")
    assert forced_scores.exit_code == 0, forced_scores.stderr
    first, second = json.loads(plain_scores.stdout)["results"][0], json.loads(forced_scores.stdout)["results"][0]
    assert abs(first["spearman"] - second["spearman"]) < 1e-6 and forced_scores.stderr.count(NOTICE) == 1
    assert log.failures >= 2 and not any(log.alive_at_next_call)


class InfinityOnce:
    """A forward pass whose first batch overflows to inf, as fp16 activations past 65,504 do."""

    def __init__(self, forward: Any, log: list[int]) -> None:
        self.forward, self.log = forward, log

    def __call__(self, input_ids: Any, mask: Any) -> Any:
        hidden = self.forward(input_ids, mask)
        if not self.log:
            self.log.append(input_ids.shape[0])
            hidden = hidden.clone().fill_(float("inf"))
        return hidden


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_rows_that_overflow_are_re_run_at_fp32(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, precision: str) -> None:
    import torch

    source = write_jsonl(tmp_path / "in.jsonl", sample_texts())
    assert run("encode", source, "-o", tmp_path / "fp32.parquet", "--model", tiny_model_dir, "--id-column", "id", "--precision", "fp32", "-q").exit_code == 0
    poisoned: list[int] = []
    wrap_forward(monkeypatch, lambda forward, dtype: forward if dtype == torch.float32 else InfinityOnce(forward, poisoned))
    out = tmp_path / "out.parquet"
    result = run("encode", source, "-o", out, "--model", tiny_model_dir, "--id-column", "id", "--precision", precision)
    assert result.exit_code == 0, result.stderr
    _, vectors = read_output(out, "")
    assert np.isfinite(vectors).all()
    assert poisoned and f", {poisoned[0]} rows re-run at fp32," in result.stderr
    # The re-run rows are the fp32 model's vectors; the rest stayed at the asked precision, close to them.
    _, reference = read_output(tmp_path / "fp32.parquet", "")
    matches = np.isclose(vectors, reference, atol=1e-6).all(axis=1)
    assert matches.sum() >= poisoned[0]
    assert (np.sum(vectors * reference, axis=1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)).min() > 0.99


def test_a_vector_not_finite_even_at_fp32_fails_naming_its_row(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", ["好", "今天天气很好"])
    wrap_forward(monkeypatch, lambda forward, dtype: InfinityOnce(forward, []))
    out = tmp_path / "out.parquet"
    result = run("encode", source, "-o", out, "--model", tiny_model_dir, "--id-column", "id", "--precision", "bf16")
    assert result.exit_code == 1
    assert error_of(result) == f"sbert: error: {source}: row 0 (id t0): the model's vector is not finite even at fp32; its weights may be damaged"
    assert not out.exists()
