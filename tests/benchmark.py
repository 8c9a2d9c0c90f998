"""`make bench`: sbert encode against sentence-transformers and the model card's snippet, same model, same run.

Builds the bert-base-chinese-shaped stand-in (the real config and vocab from ../shared/data, random
weights: same compute as DMetaSoul/sbert-chinese-general-v1) and a fixed corpus (unique sentences of the
seven evaluation sets plus a seeded tail of paragraphs up to ~500 characters). Every measurement runs
in a fresh child process, interleaved and repeated, and times the whole job from loading the model to
the Parquet file on disk; the child also reports its peak RSS. Prints rows/s, real tokens/s, the ratio
to sentence-transformers, the share of the machine's matmul limit, and peak memory.

    python -m tests.benchmark            # full: 2000 rows, 3 rounds (about 25 minutes on 2 cores)
    python -m tests.benchmark --quick    # about two minutes
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
SETS = [
    "csts/STS-B.valid.data",
    "csts/STS-B.test.data",
    "afqmc/dev.txt",
    "lcqmc/LCQMC.valid.data",
    "bq/BQ.valid.data",
    "pawsx/PAWSX.valid.data",
    "xiaobu/dev.txt",
]
MAX_SEQ_LENGTH = 256

# Each child times its job from model load to the Parquet file on disk, then prints JSON.
CHILD = r'''
import json, resource, sys, time
kind, precision, model, corpus, out, device, batch_size = sys.argv[1:8]
batch_size = int(batch_size)
import torch  # imported before the clock starts, for every contender alike
import transformers, sentence_transformers, pyarrow
from sbert_cli.encoder import available_cores
torch.set_num_threads(available_cores())

def write_parquet(vectors, path):
    import numpy as np, pyarrow as pa, pyarrow.parquet as pq
    values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    table = pa.table({"id": pa.array(range(len(vectors))), "embedding": pa.FixedSizeListArray.from_arrays(values, vectors.shape[1])})
    pq.write_table(table, path)

start = time.perf_counter()
if kind == "sbert":
    from sbert_cli.cli import app
    try:
        app(["encode", corpus, "-o", out, "--model", model, "--precision", precision, "--device", device,
             "--batch-size", str(batch_size), "--max-tokens", str(batch_size * %(length)d), "-q"])
    except SystemExit as done:
        assert not done.code, done.code
else:
    texts = [json.loads(line)["text"] for line in open(corpus, encoding="utf-8")]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" and device == "cpu" else torch.autocast("cpu", enabled=False)
    if kind == "st":
        from sentence_transformers import SentenceTransformer
        st = SentenceTransformer(model, device=device)
        if device != "cpu" and precision == "fp16":
            st = st.half()  # half precision on CUDA the way sentence-transformers documents it: the weights
        elif device != "cpu" and precision == "bf16":
            st = st.to(torch.bfloat16)
        with autocast:
            vectors = st.encode(texts, batch_size=batch_size, convert_to_numpy=True)
    else:  # the model card's snippet: input order, each batch padded to its longest text
        from transformers import AutoModel, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(model)
        encoder = AutoModel.from_pretrained(model).eval()
        parts = []
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=%(length)d, return_tensors="pt")
            with torch.no_grad(), autocast:
                output = encoder(**batch)
            mask = batch["attention_mask"].unsqueeze(-1).float()
            parts.append(((output[0].float() * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy())
        import numpy as np
        vectors = np.concatenate(parts)
    write_parquet(vectors, out)
seconds = time.perf_counter() - start
gpu_mib = torch.cuda.max_memory_allocated() / 2**20 if device != "cpu" else 0.0
print(json.dumps({"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "gpu_mib": gpu_mib}))
''' % {"length": MAX_SEQ_LENGTH}


@dataclass
class Contender:
    kind: str  # sbert | st | snippet
    precision: str  # fp32 | bf16
    label: str


def build_standin(directory: Path) -> Path:
    if (directory / "model.safetensors").exists():
        return directory
    sys.path.insert(0, str(ROOT))
    from tests.conftest import CHINESE_CONFIG, CHINESE_VOCAB, read_vocab, write_st_model

    config = json.loads(CHINESE_CONFIG.read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_") and k not in ("architectures", "transformers_version", "torch_dtype")}
    return write_st_model(directory, config, read_vocab(CHINESE_VOCAB), max_seq_length=MAX_SEQ_LENGTH)


def build_corpus(path: Path, rows: int, seed: int = 0) -> list[str]:
    """Unique sentences of the seven sets, shuffled with a fixed seed, plus ~10% paragraphs of consecutive sentences."""
    unique: dict[str, None] = {}
    for name in SETS:
        for line in (SHARED / name).read_text(encoding="utf-8").split("\n"):
            fields = line.split("\t")
            if len(fields) >= 3:
                for text in fields[:2]:
                    if text.strip():
                        unique.setdefault(text, None)
    sentences = list(unique)
    rng = random.Random(seed)
    paragraphs = []
    for _ in range(rows // 10):
        start, target, parts = rng.randrange(len(sentences)), rng.randint(100, 500), []
        while sum(map(len, parts)) < target:
            parts.append(sentences[(start + len(parts)) % len(sentences)])
        paragraphs.append("，".join(parts)[:500])
    texts = rng.sample(sentences, rows - len(paragraphs)) + paragraphs
    rng.shuffle(texts)
    with path.open("w", encoding="utf-8") as out:
        for text in texts:
            out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return texts


def matmul_peak(dtype_name: str, device: str = "cpu", seconds: float = 2.0) -> float:
    """Best GFLOP/s of the FFN-shaped matmul the encoder spends its time in, on this process's cores (or GPU)."""
    import torch

    from sbert_cli.encoder import available_cores

    torch.set_num_threads(available_cores())
    dtype = getattr(torch, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype_name])
    rows = 2048 if device == "cpu" else 65536
    a = torch.randn(rows, 768, dtype=dtype, device=device)
    w = torch.randn(3072, 768, dtype=dtype, device=device)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.nn.functional.linear(a, w)
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, 2 * rows * 768 * 3072 / (time.perf_counter() - start) / 1e9)
    return best


def flops_per_corpus(model_dir: Path, texts: list[str]) -> tuple[int, float]:
    """(real tokens, FLOPs) of one pass over the corpus: linear layers on every real token plus attention."""
    from sbert_cli.encoder import load_encoder

    encoder = load_encoder(str(model_dir), device="cpu")
    config = encoder.model.config
    d, layers, inner = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    lengths = [len(ids) for ids in encoder.tokenize(texts).ids]
    linear = sum(lengths) * layers * 2 * (4 * d * d + 2 * d * inner)
    attention = sum(n * n for n in lengths) * layers * 4 * d
    return sum(lengths), float(linear + attention)


def run_child(contender: Contender, model_dir: Path, corpus: Path, out: Path, device: str, batch_size: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "true"}
    args = [sys.executable, "-c", CHILD, contender.kind, contender.precision, str(model_dir), str(corpus), str(out), device, str(batch_size)]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{contender.label} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parity(a: Path, b: Path) -> float:
    import numpy as np
    import pyarrow.parquet as pq

    from sbert_cli.similarity import cosine_rows

    def load(path: Path):
        return np.asarray(pq.read_table(path).column("embedding").to_pylist(), dtype=np.float32)

    return float(cosine_rows(load(a), load(b)).min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="120 rows, 2 rounds: about two minutes")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--skip-snippet", action="store_true", help="leave out the (slow) model card snippet")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: sbert and sentence-transformers both at --gpu-precision")
    parser.add_argument("--gpu-precision", default="fp16", choices=["fp16", "bf16"])
    parser.add_argument("--batch-size", type=int, help="rows a batch, the same for every contender (default 32 on CPU, 128 on CUDA)")
    parser.add_argument("--workdir", default=str(ROOT / "bench_out"))
    args = parser.parse_args()
    rows = args.rows or (120 if args.quick else 2000)
    rounds = args.rounds or (2 if args.quick else 3)
    if not (SHARED / SETS[0]).exists():
        raise SystemExit(f"make bench needs {SHARED} (the evaluation sets, config and vocab)")
    sys.path.insert(0, str(ROOT))
    work = Path(args.workdir)
    work.mkdir(exist_ok=True)
    model_dir = build_standin(work / "standin")
    corpus = work / f"corpus-{rows}.jsonl"
    texts = build_corpus(corpus, rows)
    real_tokens, flops = flops_per_corpus(model_dir, texts)
    device = args.device
    batch_size = args.batch_size or (32 if device == "cpu" else 128)
    precisions = ("fp32", "bf16") if device == "cpu" else ("fp32", args.gpu_precision)
    # The peak is the best of two measurements, before and after the runs, against a noisy neighbour.
    peaks = {precision: matmul_peak(precision, device) for precision in precisions}
    # bf16 only pays where the CPU multiplies bf16 natively (AVX512-BF16, AMX); elsewhere it is emulated.
    half = precisions[1]
    half_applies = device != "cpu" or peaks["bf16"] > peaks["fp32"]
    contenders = [Contender("sbert", "fp32", "sbert encode"), Contender("st", "fp32", "sentence-transformers")]
    if half_applies:
        contenders += [Contender("sbert", half, "sbert encode"), Contender("st", half, "sentence-transformers")]
    snippet = [] if args.skip_snippet or device != "cpu" else [Contender("snippet", "fp32", "model card snippet")]
    print(f"corpus: {rows} rows, {real_tokens} real tokens ({real_tokens / rows:.1f} a row), {flops / 1e12:.2f} TFLOP a pass")
    if not half_applies:
        print("bf16: not measured end to end: this CPU has no native bf16 matmul (bf16 is emulated, slower than fp32)")
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        for round_index in range(rounds):
            order = contenders + (snippet if round_index == 0 else [])
            for contender in (order if round_index % 2 == 0 else list(reversed(order))):
                key = f"{contender.label}|{contender.precision}"
                out = Path(scratch) / f"{contender.kind}-{contender.precision}.parquet"
                result = run_child(contender, model_dir, corpus, out, device, batch_size)
                results.setdefault(key, []).append(result)
                print(f"  round {round_index + 1}: {contender.label:22} {contender.precision}: {rows / result['seconds']:6.1f} rows/s", flush=True)
        cosine = parity(Path(scratch) / "sbert-fp32.parquet", Path(scratch) / "st-fp32.parquet")
    for precision in precisions:
        peaks[precision] = max(peaks[precision], matmul_peak(precision, device))
    where = f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable)" if device == "cpu" else device
    print(f"\nmatmul peak on {where}: " + ", ".join(f"{p} {peaks[p]:.0f} GFLOP/s" for p in precisions))
    header = f"{'contender':22} {'prec':5} {'rows/s':>8} {'tokens/s':>9} {'x ST fp32':>9} {'x ST same':>9} {'% matmul':>9} {'peak MiB':>9}"
    if device != "cpu":
        header += f" {'GPU MiB':>8}"
    print(header)
    print("-" * len(header))
    median = {key: statistics.median(r["seconds"] for r in runs) for key, runs in results.items()}
    for key, runs in results.items():
        label, precision = key.split("|")
        seconds = median[key]
        st_same = median.get(f"sentence-transformers|{precision}")
        limit_seconds = flops / (peaks[precision] * 1e9)
        print(
            f"{label:22} {precision:5} {rows / seconds:8.1f} {real_tokens / seconds:9.0f} "
            f"{median['sentence-transformers|fp32'] / seconds:9.2f} {(st_same / seconds if st_same else float('nan')):9.2f} "
            f"{100 * limit_seconds / seconds:8.0f}% {max(r['peak_mib'] for r in runs):9.0f}"
            + (f" {max(r['gpu_mib'] for r in runs):8.0f}" if device != "cpu" else "")
        )
    print(f"\nparity: sbert fp32 vs sentence-transformers fp32, min cosine over {rows} rows = {cosine:.7f}")
    print("times are medians over rounds, from model load to Parquet on disk, each in a fresh process")


if __name__ == "__main__":
    main()
