"""Peak memory is bounded by the window, not the input: 200,000 rows cost about what 20,000 do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAKE_CLI_CHILD, ROOT


def write_rows(path: Path, rows: int) -> None:
    sentence = "今天天气很好，我们一起去公园散步，然后在湖边的小咖啡馆坐一会儿。"
    with path.open("w", encoding="utf-8") as out:
        for i in range(rows):
            out.write(json.dumps({"id": f"row-{i}", "text": sentence[: 10 + i % 25] + str(i)}, ensure_ascii=False) + "\n")


def peak_kib(source: Path, output: Path) -> int:
    args = ["encode", str(source), "-o", str(output), "--id-column", "id", "--chunk-size", "5000", "-q"]
    env = {**os.environ, "FAKE_DIM": "64"}
    done = subprocess.run([sys.executable, "-c", FAKE_CLI_CHILD, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("output", ["parquet", "npy"])
def test_peak_memory_does_not_grow_with_rows(tmp_path: Path, output: str) -> None:
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    write_rows(small, 20_000)
    write_rows(large, 200_000)
    small_peak = peak_kib(small, tmp_path / f"small.{output}")
    large_peak = peak_kib(large, tmp_path / f"large.{output}")
    print(f"peak RSS ({output}): 20,000 rows {small_peak / 1024:.1f} MiB, 200,000 rows {large_peak / 1024:.1f} MiB")
    assert large_peak <= 1.3 * small_peak, (small_peak, large_peak)
