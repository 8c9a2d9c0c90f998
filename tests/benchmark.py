"""`make bench`: sbert encode against sentence-transformers (torch fp32, torch bf16, OpenVINO), same model, same run.

Builds the bert-base-chinese-shaped stand-in (the real config and vocab from ../shared/data, random
weights: the same compute as DMetaSoul/sbert-chinese-general-v1) and a fixed corpus (unique sentences of
the seven evaluation sets plus a seeded 10% of paragraphs up to ~500 characters). Every run is a fresh
process, timed whole from its start to the Parquet file on disk, interleaved and repeated; start-up is
the same process on a one-row input. Prints rows/s, ratios, start-up seconds, the share of the measured
GEMM peak of the precision used (FLOPs of the real tokens over the encoding time) and peak RSS, naming
the CPU and its bf16 instructions.

sentence-transformers' OpenVINO backend needs optimum-intel, which pins an older transformers: it runs
from a virtualenv of its own (bench_out/openvino-venv, made when missing) on a model exported once
beforehand (not timed), as its documentation recommends.

    python -m tests.benchmark                      # 2200 rows, 2 rounds
    python -m tests.benchmark --quick              # 300 rows, 1 round
    python -m tests.benchmark --rows 11000 --rounds 1 --contenders sbert-auto,st-bf16,st-openvino
    python -m tests.benchmark --cache-figures      # re-runs with --cache, 10% new rows, duplicated texts
    python -m tests.benchmark --device cuda --rows 50000 --rounds 1   # on a GPU: sbert vs sentence-transformers fp16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
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

# A peer's child: encode the corpus, write the same Parquet sbert writes, print peak RSS. Needs only
# torch, sentence-transformers and pyarrow, so it runs in the OpenVINO virtualenv too.
PEER = r'''
import json, resource, sys
kind, model, corpus, out, device, batch_size = sys.argv[1:7]
import torch
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from sentence_transformers import SentenceTransformer
torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
texts = [json.loads(line)["text"] for line in open(corpus, encoding="utf-8")]
if kind == "st-openvino":
    model = SentenceTransformer(model, backend="openvino", device="cpu")
else:
    model = SentenceTransformer(model, device=device)
    if device != "cpu" and kind == "st-fp16":
        model = model.half()  # half precision on CUDA the way sentence-transformers documents it
autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind == "st-bf16")
with autocast:
    vectors = model.encode(texts, batch_size=int(batch_size), convert_to_numpy=True)
values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
table = pa.table({"id": pa.array(range(len(texts))), "embedding": pa.FixedSizeListArray.from_arrays(values, vectors.shape[1])})
pq.write_table(table, out)
gpu = torch.cuda.max_memory_allocated() / 2**20 if device != "cpu" else 0.0
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "gpu_mib": gpu}))
'''

# sbert's child: the command itself, as a user runs it.
SBERT = r'''
import json, resource, sys
from sbert_cli.cli import app
try:
    app(sys.argv[1:])
except SystemExit as done:
    assert not done.code, done.code
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "gpu_mib": 0.0}))
'''


@dataclass(frozen=True)
class Contender:
    name: str
    precision: str  # the precision its FLOPs are compared against: fp32, bf16 or fp16
    label: str


CPU_CONTENDERS = {
    "sbert-fp32": Contender("sbert-fp32", "fp32", "sbert encode --precision fp32"),
    "sbert-auto": Contender("sbert-auto", "auto", "sbert encode (default: auto)"),
    "st-fp32": Contender("st-fp32", "fp32", "sentence-transformers fp32"),
    "st-bf16": Contender("st-bf16", "bf16", "sentence-transformers + autocast bf16"),
    "st-openvino": Contender("st-openvino", "bf16", "sentence-transformers OpenVINO"),
}
GPU_CONTENDERS = {
    "sbert-auto": Contender("sbert-auto", "fp16", "sbert encode (default: fp16)"),
    "st-fp16": Contender("st-fp16", "fp16", "sentence-transformers .half()"),
}


def cpu_description() -> str:
    """The CPU's model name and the instructions that decide which precision is fast."""
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [flag for flag in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if flag in flags]
    cores = len(os.sched_getaffinity(0))
    return f"{name}, {cores} cores usable, flags: {' '.join(shown) or 'none of avx2/avx512/amx'}"


def build_standin(directory: Path) -> Path:
    if (directory / "model.safetensors").exists():
        return directory
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
    write_corpus(path, texts)
    return texts


def write_corpus(path: Path, texts: list[str]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for text in texts:
            out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


def matmul_peak(precision: str, device: str = "cpu", seconds: float = 2.0) -> float:
    """Best GFLOP/s of the FFN-shaped matmul (rows x 768 x 3072) the encoder spends its time in."""
    import torch

    from sbert_cli.encoder import available_cores

    torch.set_num_threads(available_cores())
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
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


def corpus_flops(model_dir: Path, texts: list[str]) -> tuple[int, float]:
    """(real tokens, FLOPs) of one pass: linear layers on every real token plus attention."""
    from sbert_cli.encoder import load_encoder

    encoder = load_encoder(str(model_dir), device="cpu", precision="fp32")
    config = json.loads((model_dir / "config.json").read_text())
    d, layers, inner = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    lengths = [len(ids) for ids in encoder.tokenize(texts).ids]
    linear = sum(lengths) * layers * 2 * (4 * d * d + 2 * d * inner)
    attention = sum(n * n for n in lengths) * layers * 4 * d
    return sum(lengths), float(linear + attention)


def openvino_python(work: Path, given: str | None) -> str:
    """An interpreter with sentence-transformers[openvino]: the one given, or a virtualenv of its own, made once."""
    if given:
        return given
    venv = work / "openvino-venv"
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import openvino, optimum.intel, sentence_transformers, pyarrow"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(python)
    import torch

    print(f"making {venv} for sentence-transformers' OpenVINO backend (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"torch=={torch.__version__.split('+')[0]}"], check=True)  # a CPU build where one is on hand
    subprocess.run([*pip, "sentence-transformers[openvino]", "pyarrow"], check=True)
    return str(python)


def export_openvino(python: str, model_dir: Path, target: Path) -> Path:
    """The stand-in exported to OpenVINO IR once, so timed runs load it as a user who saved it would."""
    if (target / "openvino" / "openvino_model.xml").exists():
        return target
    code = "import sys; from sentence_transformers import SentenceTransformer as S; S(sys.argv[1], backend='openvino', device='cpu').save_pretrained(sys.argv[2])"
    subprocess.run([python, "-c", code, str(model_dir), str(target)], check=True, capture_output=True)
    return target


@dataclass
class Setup:
    model_dir: Path
    openvino_model: Path | None
    openvino_python: str | None
    device: str
    batch_size: int


def run_once(contender: Contender, setup: Setup, corpus: Path, out: Path) -> dict:
    """One fresh process, timed whole: interpreter start, imports, model load, encoding, the file on disk."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "true"}
    if contender.name.startswith("sbert"):
        precision = "fp32" if contender.name == "sbert-fp32" else "auto"
        args = [sys.executable, "-c", SBERT, "encode", str(corpus), "-o", str(out), "--model", str(setup.model_dir),
                "--precision", precision, "--device", setup.device, "--batch-size", str(setup.batch_size), "-q"]
    elif contender.name == "st-openvino":
        assert setup.openvino_python and setup.openvino_model
        args = [setup.openvino_python, "-c", PEER, contender.name, str(setup.openvino_model), str(corpus), str(out), "cpu", str(setup.batch_size)]
    else:
        args = [sys.executable, "-c", PEER, contender.name, str(setup.model_dir), str(corpus), str(out), setup.device, str(setup.batch_size)]
    started = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{contender.label} failed:\n{done.stderr[-3000:]}")
    return {"seconds": seconds, **json.loads(done.stdout.strip().splitlines()[-1])}


def load_vectors(path: Path):
    import numpy as np
    import pyarrow.parquet as pq

    return np.asarray(pq.read_table(path).column("embedding").to_pylist(), dtype=np.float32)


def report(results: dict[str, list[dict]], startup: dict[str, float], contenders: list[Contender], rows: int, tokens: int, flops: float, peaks: dict[str, float]) -> None:
    from sbert_cli.encoder import pick_precision

    median = {name: statistics.median(run["seconds"] for run in runs) for name, runs in results.items()}
    base = median.get("st-fp32") or median.get("st-fp16")
    header = f"{'contender':40} {'rows/s':>7} {'seconds':>8} {'x ST fp32':>9} {'start s':>7} {'% GEMM peak':>16} {'peak MiB':>8}"
    print(header)
    print("-" * len(header))
    for contender in contenders:
        if contender.name not in median:
            continue
        seconds = median[contender.name]
        precision = pick_precision("auto", "cpu") if contender.precision == "auto" else contender.precision
        encoding = max(seconds - startup.get(contender.name, 0.0), 1e-9)
        share = f"{100 * flops / (peaks[precision] * 1e9) / encoding:5.0f}% of {precision}" if precision in peaks else "n/a"
        ratio = f"{base / seconds:9.2f}" if base else f"{'n/a':>9}"
        peak_mib = max(run["peak_mib"] for run in results[contender.name])
        print(f"{contender.label:40} {rows / seconds:7.1f} {seconds:8.1f} {ratio} {startup.get(contender.name, float('nan')):7.1f} {share:>16} {peak_mib:8.0f}")
    for peer in ("st-bf16", "st-openvino", "st-fp16"):
        if peer in median and "sbert-auto" in median:
            print(f"sbert default vs {peer}: {median[peer] / median['sbert-auto']:.2f}x")
    if "sbert-fp32" in median and "st-fp32" in median:
        print(f"sbert fp32 vs st-fp32: {median['st-fp32'] / median['sbert-fp32']:.2f}x")
    print(f"corpus: {rows} rows, {tokens} real tokens ({tokens / rows:.1f} a row), {flops / 1e12:.2f} TFLOP a pass")


def cache_figures(setup: Setup, work: Path, rows: int) -> None:
    """Issue figures for --cache and in-window deduplication, whole process, on the stand-in."""
    texts = build_corpus(work / "cache-base.jsonl", rows)
    known = set(texts)
    new = [text for text in build_corpus(work / "cache-new.jsonl", rows // 10 + 50, seed=1) if text not in known][: rows // 10]
    write_corpus(work / "cache-grown.jsonl", texts + new)
    doubled = texts[: rows // 2] * 2
    random.Random(2).shuffle(doubled)
    write_corpus(work / "cache-doubled.jsonl", doubled)
    cache = work / "bench-cache.sqlite"
    cache.unlink(missing_ok=True)

    def timed(corpus: str, out: str, *options: str) -> float:
        args = [sys.executable, "-c", SBERT, "encode", str(work / corpus), "-o", str(work / out), "--model", str(setup.model_dir), "-q", *options]
        started = time.perf_counter()
        subprocess.run(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True, capture_output=True)
        return time.perf_counter() - started

    first = timed("cache-base.jsonl", "c1.parquet", "--cache", str(cache))
    again = timed("cache-base.jsonl", "c2.parquet", "--cache", str(cache))
    identical = load_vectors(work / "c1.parquet").tobytes() == load_vectors(work / "c2.parquet").tobytes()
    more = timed("cache-grown.jsonl", "c3.parquet", "--cache", str(cache))
    distinct = timed("cache-base.jsonl", "c4.parquet")
    repeated = timed("cache-doubled.jsonl", "c5.parquet")
    print(f"first run with --cache: {first:.1f} s; the same {rows} rows again: {again:.1f} s ({first / again:.1f}x faster, bit-identical: {identical})")
    print(f"the file plus {len(new)} new rows (10%): {more:.1f} s ({100 * more / first:.0f}% of a full run)")
    print(f"{rows} rows that are {rows // 2} texts twice, no cache: {repeated:.1f} s ({100 * repeated / distinct:.0f}% of {rows} distinct texts: {distinct:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 rows, 1 round")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--contenders", help="comma-separated names (default: all that apply here)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: sbert and sentence-transformers both at fp16")
    parser.add_argument("--batch-size", type=int, help="rows a batch for every contender (default 32 on CPU, 128 on CUDA)")
    parser.add_argument("--openvino-python", help="an interpreter that already has sentence-transformers[openvino] and pyarrow")
    parser.add_argument("--cache-figures", action="store_true", help="time --cache re-runs and duplicated texts instead")
    parser.add_argument("--workdir", default=str(ROOT / "bench_out"))
    args = parser.parse_args()
    if not (SHARED / SETS[0]).exists():
        raise SystemExit(f"make bench needs {SHARED} (the evaluation sets, config and vocab)")
    sys.path.insert(0, str(ROOT))
    work = Path(args.workdir)
    work.mkdir(exist_ok=True)
    rows = args.rows or (300 if args.quick else 2200)
    rounds = args.rounds or (1 if args.quick else 2)
    model_dir = build_standin(work / "standin")
    print(f"CPU: {cpu_description()}")
    setup = Setup(model_dir, None, None, args.device, args.batch_size or (32 if args.device == "cpu" else 128))
    if args.cache_figures:
        cache_figures(setup, work, rows)
        return
    table = CPU_CONTENDERS if args.device == "cpu" else GPU_CONTENDERS
    names = args.contenders.split(",") if args.contenders else list(table)
    from sbert_cli.encoder import cpu_has_native_bf16

    if args.device == "cpu" and not cpu_has_native_bf16() and not args.contenders:
        names = [name for name in names if name not in ("st-bf16", "st-openvino")]
        print("bf16: not measured: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 is emulated and slower than fp32")
    contenders = [table[name] for name in names]
    if any(c.name == "st-openvino" for c in contenders):
        setup.openvino_python = openvino_python(work, args.openvino_python)
        setup.openvino_model = export_openvino(setup.openvino_python, model_dir, work / "standin-openvino")
    corpus, tiny = work / f"corpus-{rows}.jsonl", work / "corpus-1.jsonl"
    texts = build_corpus(corpus, rows)
    write_corpus(tiny, texts[:1])
    tokens, flops = corpus_flops(model_dir, texts)
    precisions = ["fp32", "bf16"] if args.device == "cpu" else ["fp16"]
    peaks = {p: matmul_peak(p, args.device) for p in precisions}
    results: dict[str, list[dict]] = {}
    startup: dict[str, float] = {}
    for contender in contenders:
        startup[contender.name] = run_once(contender, setup, tiny, work / "startup.parquet")["seconds"]
    for round_index in range(rounds):
        for contender in contenders if round_index % 2 == 0 else contenders[::-1]:
            result = run_once(contender, setup, corpus, work / f"out-{contender.name}.parquet")
            results.setdefault(contender.name, []).append(result)
            print(f"  round {round_index + 1}: {contender.label:40} {rows / result['seconds']:7.1f} rows/s", flush=True)
    peaks = {p: max(peaks[p], matmul_peak(p, args.device)) for p in precisions}  # the best of before and after
    print(f"\nCPU: {cpu_description()}" if args.device == "cpu" else f"\ndevice: {args.device}")
    print("matmul peak (2048 x 768 x 3072): " + ", ".join(f"{p} {peaks[p]:.0f} GFLOP/s" for p in precisions))
    report(results, startup, contenders, rows, tokens, flops, peaks)
    parity(work, contenders)
    print("times are medians over rounds of whole processes (start to Parquet on disk); start-up is the same process on one row")


def parity(work: Path, contenders: list[Contender]) -> None:
    from sbert_cli.similarity import cosine_rows

    names = {c.name for c in contenders}
    reference = "st-fp32" if "st-fp32" in names else None
    if reference is None:
        return
    theirs = load_vectors(work / f"out-{reference}.parquet")
    for name in sorted(names - {reference}):
        cosine = cosine_rows(load_vectors(work / f"out-{name}.parquet"), theirs).min()
        print(f"min cosine to sentence-transformers fp32: {name} {cosine:.6f}")


if __name__ == "__main__":
    main()
