"""Peak memory is bounded by the window, not the input: 200,000 rows cost about what 20,000 do.

At the default --chunk-size that is 2 windows against 20, so anything that lives across windows (a queue
that grows, a cache keyed by batch shape, vectors kept after writing) shows. Both the fake encoder and the
real one (a tiny BERT built here, at the default precision) are measured, each run a process of its own.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CHINESE_VOCAB, FAKE_CLI_CHILD, ROOT, SPECIAL_TOKENS, cli_child, read_vocab, write_st_model


def write_rows(path: Path, rows: int) -> None:
    """Rows of 4 to 60 Chinese characters drawn at random: many distinct lengths, as real text has."""
    rng = random.Random(0)
    characters = [chr(code) for code in range(0x4E00, 0x4E00 + 3000)]
    with path.open("w", encoding="utf-8") as out:
        for i in range(rows):
            text = "".join(rng.choices(characters, k=rng.randint(4, 60)))
            out.write(json.dumps({"id": f"row-{i}", "text": text}, ensure_ascii=False) + "\n")


@pytest.fixture(scope="module")
def rows_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("rows")
    small, large = directory / "small.jsonl", directory / "large.jsonl"
    write_rows(small, 20_000)
    write_rows(large, 200_000)
    return small, large


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT (hidden 32, 2 layers): the bert-base-chinese vocab when ../shared has it."""
    vocab = read_vocab(CHINESE_VOCAB) if CHINESE_VOCAB.exists() else SPECIAL_TOKENS + [chr(code) for code in range(0x4E00, 0x4E00 + 3000)]
    config = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    model_dir = write_st_model(tmp_path_factory.mktemp("tiny-chinese-bert"), config, vocab, max_seq_length=256)
    # One run first, so that a one-time conversion (OpenVINO's, kept beside the model) is on disk before any peak
    # is measured: converting inside the first 20,000-row run raised that run's peak and hid a growth that the
    # 200,000-row run showed against every later case.
    warm_up = model_dir.parent / "one.jsonl"
    write_rows(warm_up, 1)
    peak_kib(cli_child(), warm_up, model_dir.parent / "one.parquet", "--model", str(model_dir))
    return model_dir


def peak_kib(child: str, source: Path, output: Path, *options: str) -> int:
    args = ["encode", str(source), "-o", str(output), "--id-column", "id", "-q", *options]
    env = {**os.environ, "FAKE_DIM": "64"}
    done = subprocess.run([sys.executable, "-c", child, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])


def outputs(directory: Path, name: str, output: str) -> Path:
    return directory / (name if output == "directory" else f"{name}.{output}")


def check_bounded(label: str, small_peak: int, large_peak: int) -> None:
    print(f"peak RSS ({label}): 20,000 rows {small_peak / 1024:.1f} MiB, 200,000 rows {large_peak / 1024:.1f} MiB")
    assert large_peak <= 1.3 * small_peak, (small_peak, large_peak)


@pytest.mark.slow
@pytest.mark.parametrize("output", ["parquet", "npy", "directory"])
def test_peak_memory_does_not_grow_with_rows_fake_encoder(tmp_path: Path, rows_files: tuple[Path, Path], output: str) -> None:
    small, large = rows_files
    small_peak = peak_kib(FAKE_CLI_CHILD, small, outputs(tmp_path, "small", output))
    large_peak = peak_kib(FAKE_CLI_CHILD, large, outputs(tmp_path, "large", output))
    check_bounded(f"fake encoder, {output}", small_peak, large_peak)


@pytest.mark.slow
@pytest.mark.parametrize(
    "output, options",
    [("parquet", ()), ("npy", ()), ("directory", ()), ("parquet", ("--precision", "fp32")), ("parquet", ("--cache", "CACHE"))],
    ids=["parquet", "npy", "directory", "parquet-fp32", "parquet-cache"],
)
def test_peak_memory_does_not_grow_with_rows_real_encoder(
    tmp_path: Path, rows_files: tuple[Path, Path], tiny_bert_dir: Path, output: str, options: tuple[str, ...]
) -> None:
    small, large = rows_files
    options = tuple(str(tmp_path / "cache.sqlite") if option == "CACHE" else option for option in options)
    model = ("--model", str(tiny_bert_dir), *options)
    small_peak = peak_kib(cli_child(), small, outputs(tmp_path, "small", output), *model)
    large_peak = peak_kib(cli_child(), large, outputs(tmp_path, "large", output), *model)
    check_bounded(f"tiny BERT, {output} {' '.join(options)}", small_peak, large_peak)

