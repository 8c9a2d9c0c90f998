"""Encoding from an object store against the same file read from local disk: whole `sbert encode` processes, timed.

    python -m tests.store_throughput                      # 100,000 rows, a tiny BERT: what reading costs
    python -m tests.store_throughput --model standin      # the bert-base-shaped stand-in (needs ../shared/data)

The store is moto's S3 server on loopback, started here, reached over HTTP through AWS_ENDPOINT_URL as a user's
MinIO would be. Each run is a fresh process with the real encoder (no fake): local JSONL and Parquet, the same
objects from the store, and the local JSONL with its output written to the store; rounds are interleaved and
the median is reported, with the ratio to the local run of the same format.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_model(kind: str, work: Path) -> Path:
    """A 2-layer, 32-wide BERT over the Chinese vocab (or the sample data's characters): tokenizing and reading
    dominate, so the figure is about I/O. `standin` is the bench's bert-base-shaped model instead."""
    from tests.benchmark import build_standin
    from tests.conftest import CHINESE_VOCAB, SPECIAL_TOKENS, read_vocab, sample_texts, write_st_model

    if kind == "standin":
        return build_standin(work / "standin")
    if CHINESE_VOCAB.exists():
        vocab = read_vocab(CHINESE_VOCAB)
    else:
        vocab = SPECIAL_TOKENS + sorted({ch for text in sample_texts() for ch in text if not ch.isspace()})
    config = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    return write_st_model(work / "tiny", config, vocab, max_seq_length=256)


def build_inputs(work: Path, rows: int) -> dict[str, Path]:
    """The bench corpus (the evaluation sets' sentences plus 10% paragraphs) when ../shared/data is there, as JSONL
    and Parquet; otherwise numbered sample sentences."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = work / f"corpus-{rows}.jsonl"
    try:
        from tests.benchmark import build_corpus

        texts = build_corpus(jsonl, rows)
    except (OSError, IndexError, ValueError):
        from tests.conftest import sample_texts

        base = sample_texts()
        texts = [f"{base[i % len(base)]}（{i}）" for i in range(rows)]
        jsonl.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts), encoding="utf-8")
    parquet = work / f"corpus-{rows}.parquet"
    pq.write_table(pa.table({"text": texts}), parquet, row_group_size=10_000)
    return {"jsonl": jsonl, "parquet": parquet}


def timed(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sbert_cli", *args, "-q"], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"sbert {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", choices=["tiny", "standin"], default="tiny")
    options = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from moto.server import ThreadedMotoServer
    from pyarrow.fs import LocalFileSystem, S3FileSystem, copy_files

    from tests.benchmark import cpu_description

    work = Path(tempfile.mkdtemp(prefix="sbert-store-throughput-"))
    model = build_model(options.model, work)
    inputs = build_inputs(work, options.rows)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    store = S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", region="us-east-1", access_key="k", secret_key="s", allow_bucket_creation=True)
    store.create_dir("bench")
    for path in inputs.values():
        copy_files(str(path), f"bench/{path.name}", source_filesystem=LocalFileSystem(), destination_filesystem=store)
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    }
    model_args = ["--model", str(model)]
    runs = {
        "local jsonl": ["encode", str(inputs["jsonl"]), "-o", str(work / "out.parquet"), *model_args],
        "s3 jsonl": ["encode", f"s3://bench/{inputs['jsonl'].name}", "-o", str(work / "out.parquet"), *model_args],
        "local parquet": ["encode", str(inputs["parquet"]), "-o", str(work / "out.parquet"), *model_args],
        "s3 parquet": ["encode", f"s3://bench/{inputs['parquet'].name}", "-o", str(work / "out.parquet"), *model_args],
        "local jsonl -> s3 parquet": ["encode", str(inputs["jsonl"]), "-o", "s3://bench/out.parquet", *model_args],
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    timed(runs["local jsonl"], env)  # warm the page cache and the model files
    for _ in range(options.rounds):
        for name, args in runs.items():
            seconds[name].append(timed(args, env))
    server.stop()
    print(f"CPU: {cpu_description()}")
    print(f"{options.rows} rows, {options.model} model, {inputs['jsonl'].stat().st_size / 2**20:.1f} MiB of JSONL; median of {options.rounds} rounds")
    print("| input -> output | seconds | rows/s | vs the local run |")
    print("| --- | --- | --- | --- |")
    for name, values in seconds.items():
        median = statistics.median(values)
        local = statistics.median(seconds["local parquet" if "parquet" in name.split(" -> ")[0] else "local jsonl"])
        print(f"| {name} | {median:.2f} | {options.rows / median:,.0f} | {local / median:.2f}x |")


if __name__ == "__main__":
    main()
