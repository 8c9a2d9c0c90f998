"""Peak memory is bounded by the window, not the input: a run's peak stops growing once its first windows are done.

Each run is a process of its own that prints its peak RSS (ru_maxrss).

- The fake encoder: 20,000 rows against 200,000 (2 windows against 20 at the default --chunk-size), within 1.3x.
- The real encoder (a tiny BERT built here): its peak climbs over its first windows, as OpenVINO's per-shape kernel
  cache and the C heap fill, then levels off. A ratio of two peaks hides a leak on a ~500 MiB baseline (a Parquet
  writer keeping every row it wrote: 1.2x at 200,000 rows, under 1.3x), so one run reads its peak at 20,000 rows,
  at 200,000 (past the climb) and at 400,000: the climb must stay within 1.3x (an unbounded per-shape cache fails
  that), and the last 200,000 rows may add at most GROWTH_BOUND_MIB (20 MiB): a leak of more than ~105 bytes a
  written row fails.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CHINESE_VOCAB, FAKE_CLI_CHILD, ROOT, SPECIAL_TOKENS, cli_child, read_vocab, write_st_model

MIB = 1024  # ru_maxrss is in KiB

# The real encoder's runs: windows of CHUNK rows (200,000 rows are 100 windows, by which its peak has levelled off),
# the peak read once EARLY, PLATEAU and PLATEAU + MORE rows are written. Growth over the last MORE rows, measured on
# 2 cores (MiB): unmodified code, Parquet +1.5 / +0.0 / +0.0, .npy +1.6 / +1.6 / +1.4 / +2.2, JSON lines +1.7 / +2.8 /
# +2.1, a directory +1.1, a directory with --cache +1.1 / +2.4 / +0.0. Deliberate leaks (scratch copies): 600 bytes kept a row
# handed to pyarrow's write_table +112.9, 300 bytes +57.3; each window's ids and vectors kept by the writer (~200
# bytes a row at the tiny BERT's 32 dims) Parquet +36.5, .npy +38.8, JSON lines +38.7, a directory +37.6; 600 bytes a
# row kept by the .npy and JSON-lines writers +112.5 and +111.9; OpenVINO's kernel cache left at its default 5,000
# entries +154 (and 1.67x from EARLY to PLATEAU). 20 MiB is 7x the largest clean growth and about half the smallest
# leak. At the default --chunk-size (20 windows in 200,000 rows) the peak was still climbing there (+14 to +18 MiB to
# 400,000 rows), hence the smaller windows.
CHUNK = 2_000
EARLY, PLATEAU, MORE = 20_000, 200_000, 200_000
GROWTH_BOUND_MIB = 20
RATIO_BOUND = 1.3  # PLATEAU against EARLY: 1.13 to 1.16 measured


def write_rows(path: Path, rows: int, lengths: tuple[int, int] = (4, 60)) -> None:
    """Rows of Chinese characters, their number drawn at random in `lengths`: many distinct lengths, as real text
    has. The same seed each time, so a shorter file is a prefix of a longer one."""
    rng = random.Random(0)
    characters = [chr(code) for code in range(0x4E00, 0x4E00 + 3000)]
    with path.open("w", encoding="utf-8") as out:
        for i in range(rows):
            text = "".join(rng.choices(characters, k=rng.randint(*lengths)))
            out.write(json.dumps({"id": f"row-{i}", "text": text}, ensure_ascii=False) + "\n")


@pytest.fixture(scope="module")
def rows_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("rows")
    small, large = directory / "small.jsonl", directory / "large.jsonl"
    write_rows(small, 20_000)
    write_rows(large, 200_000)
    return small, large


@pytest.fixture(scope="module")
def short_rows_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """PLATEAU and PLATEAU + MORE rows of 4 to 16 characters (the tiny BERT encodes them twice as fast as 4 to 60),
    the first a prefix of the second."""
    directory = tmp_path_factory.mktemp("short-rows")
    plateau, longer = directory / "plateau.jsonl", directory / "longer.jsonl"
    write_rows(plateau, PLATEAU, lengths=(4, 16))
    write_rows(longer, PLATEAU + MORE, lengths=(4, 16))
    return plateau, longer


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT (hidden 32, 2 layers): the bert-base-chinese vocab when ../shared has it."""
    vocab = read_vocab(CHINESE_VOCAB) if CHINESE_VOCAB.exists() else SPECIAL_TOKENS + [chr(code) for code in range(0x4E00, 0x4E00 + 3000)]
    config = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    model_dir = write_st_model(tmp_path_factory.mktemp("tiny-chinese-bert"), config, vocab, max_seq_length=256)
    # One run first, so that a one-time conversion (OpenVINO's, kept beside the model) is on disk before any peak
    # is measured: converting inside a measured run raises that run's peak where it happens and hides growth after.
    warm_up = model_dir.parent / "one.jsonl"
    write_rows(warm_up, 1)
    run_child(cli_child(), warm_up, model_dir.parent / "one.parquet", "--model", str(model_dir))
    return model_dir


def run_child(child: str, source: Path, output: Path, *options: str) -> list[str]:
    """The child's stdout lines; its peak RSS (KiB) is the last."""
    args = ["encode", str(source), "-o", str(output), "--id-column", "id", "-q", *options]
    env = {**os.environ, "FAKE_DIM": "64"}
    done = subprocess.run([sys.executable, "-c", child, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def peak_kib(child: str, source: Path, output: Path, *options: str) -> int:
    return int(run_child(child, source, output, *options)[-1])


# Every writer's write() (a file's, or each shard's) reports the peak so far once the rows written in all pass a mark.
# It only reads ru_maxrss after the real write: what a leak keeps is kept all the same.
WATCH_SETUP = """
import resource
from sbert_cli.io.output_formats import OUTPUT_FORMATS

_marks, _written = MARKS, [0]

def _watched(write):
    def write_and_watch(self, ids, vectors, n_tokens=None):
        write(self, ids, vectors, n_tokens)
        before = _written[0]
        _written[0] += len(ids)
        for mark in _marks:
            if before < mark <= _written[0]:
                print(f"peak at {mark} rows: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", flush=True)
    return write_and_watch

for _spec in OUTPUT_FORMATS.values():
    _spec.writer.write = _watched(_spec.writer.write)
"""


def peaks_at_marks(source: Path, output: Path, marks: tuple[int, ...], *options: str) -> tuple[dict[int, int], int]:
    """Peak RSS (KiB) once each mark's rows are written, and the whole run's."""
    lines = run_child(cli_child(WATCH_SETUP.replace("MARKS", repr(marks))), source, output, *options)
    at = {int(mark): int(kib) for mark, kib in (re.fullmatch(r"peak at (\d+) rows: (\d+)", line).groups() for line in lines[:-1])}
    assert sorted(at) == sorted(marks), lines
    return at, int(lines[-1])


def outputs(directory: Path, name: str, output: str) -> Path:
    return directory / (name if output == "directory" else f"{name}.{output}")


def check_bounded(label: str, small_peak: int, large_peak: int) -> None:
    print(f"peak RSS ({label}): 20,000 rows {small_peak / MIB:.1f} MiB, 200,000 rows {large_peak / MIB:.1f} MiB")
    assert large_peak <= 1.3 * small_peak, (small_peak, large_peak)


@pytest.mark.slow
@pytest.mark.parametrize("output", ["parquet", "npy", "directory"])
def test_peak_memory_does_not_grow_with_rows_fake_encoder(tmp_path: Path, rows_files: tuple[Path, Path], output: str) -> None:
    small, large = rows_files
    small_peak = peak_kib(FAKE_CLI_CHILD, small, outputs(tmp_path, "small", output))
    large_peak = peak_kib(FAKE_CLI_CHILD, large, outputs(tmp_path, "large", output))
    check_bounded(f"fake encoder, {output}", small_peak, large_peak)


def real_peaks(label: str, source: Path, output: Path, model_dir: Path, *options: str) -> tuple[dict[int, int], int]:
    at, end = peaks_at_marks(source, output, (EARLY, PLATEAU), "--model", str(model_dir), "--chunk-size", str(CHUNK), *options)
    print(
        f"peak RSS (tiny BERT, {label}): {at[EARLY] / MIB:.1f} MiB at {EARLY:,} rows, "
        f"{at[PLATEAU] / MIB:.1f} MiB at {PLATEAU:,}, {end / MIB:.1f} MiB at the end"
    )
    return at, end


def check_climb(at: dict[int, int]) -> None:
    assert at[PLATEAU] <= RATIO_BOUND * at[EARLY], f"{PLATEAU:,} rows peaked {at[PLATEAU] / at[EARLY]:.2f}x as high as {EARLY:,} (bound {RATIO_BOUND}x)"


@pytest.mark.slow
@pytest.mark.parametrize(
    "output, options",
    [("parquet", ()), ("npy", ()), ("jsonl", ()), ("directory", ("--cache", "CACHE"))],
    ids=["parquet", "npy", "jsonl", "directory-cache"],
)
def test_peak_memory_stops_growing_real_encoder(
    tmp_path: Path, short_rows_files: tuple[Path, Path], tiny_bert_dir: Path, output: str, options: tuple[str, ...]
) -> None:
    """Past its first 200,000 rows, 200,000 more rows add at most GROWTH_BOUND_MIB to the peak, for every output kind."""
    label = " ".join([output, *options])
    options = tuple(str(tmp_path / "cache.sqlite") if option == "CACHE" else option for option in options)
    at, end = real_peaks(label, short_rows_files[1], outputs(tmp_path, "out", output), tiny_bert_dir, *options)
    growth = (end - at[PLATEAU]) / MIB
    print(f"  the last {MORE:,} rows: {growth:+.1f} MiB")
    assert growth <= GROWTH_BOUND_MIB, f"the last {MORE:,} rows added {growth:.1f} MiB to the peak (bound {GROWTH_BOUND_MIB} MiB)"
    check_climb(at)


@pytest.mark.slow
def test_peak_memory_levels_off_real_encoder_fp32(tmp_path: Path, short_rows_files: tuple[Path, Path], tiny_bert_dir: Path) -> None:
    """At fp32 only the climb is bounded, over 200,000 rows: OpenVINO's fp32 path keeps growing past them (peak 420,
    448, 462, 473 MiB at 200,000, 400,000, 600,000, 800,000 rows; +25 to +32 MiB over the growth test's last 200,000,
    the same with its kernel cache at 10 entries as at 50), where torch's fp32 path adds +0.0. Unexplained so far;
    once it levels off, this belongs in the growth test."""
    at, _ = real_peaks("parquet --precision fp32", short_rows_files[0], tmp_path / "out.parquet", tiny_bert_dir, "--precision", "fp32")
    check_climb(at)
