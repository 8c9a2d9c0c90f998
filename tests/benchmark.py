"""`make bench`: sbert encode against sentence-transformers (torch fp32, torch bf16, OpenVINO, OpenVINO int8), same model, same run.

Builds the bert-base-chinese-shaped stand-in (the real config and vocab from ../shared/data, random
weights: the same compute as DMetaSoul/sbert-chinese-general-v1) and a fixed corpus (unique sentences of
the seven evaluation sets plus a seeded 10% of paragraphs up to ~500 characters). Every run is a fresh
process, timed whole from its start to the Parquet file on disk, interleaved and repeated; start-up is
the same process on a one-row input. Prints rows/s, ratios, start-up seconds, the share of the measured
GEMM peak of the precision used (FLOPs of the real tokens over the encoding time) and peak RSS, naming
the CPU and its bf16 instructions.

sentence-transformers' OpenVINO backend needs optimum-intel, which pins an older transformers: it runs
from a virtualenv of its own (bench_out/openvino-venv, made when missing) on a model exported once
beforehand (not timed), as its documentation recommends. sbert's own one-time OpenVINO conversion (its
default backend on CPUs with native bf16, when the openvino extra is installed) is likewise made before
the timed runs, and its time printed. So are the two int8 models: sbert's (--precision int8: quantized once, its
quality gate's figures printed) and sentence-transformers' own (export_static_quantized_openvino_model's recipe,
calibrated on 300 local sentences since no hub is reachable); each int8 contender's min cosine to fp32 vectors of
the same corpus is printed after the table.

First comes the start-up table (tests/startup_bench.py: sbert sim A B and a one-row encode, whole processes on the
converted model, best of 5, against sentence-transformers loading the model and encoding two sentences; on a GPU
too). The default CPU run then has two tables, each held to its goal: sbert fp32 against ST fp32 on 2,200 rows, then
sbert's default (and sbert on torch's backend) against ST bf16 and ST + OpenVINO on 11,000 rows, with sbert
--precision int8 against ST's int8 OpenVINO model; 2 rounds.

    python -m tests.benchmark                      # the two tables above (where bf16 is emulated: fp32 only)
    python -m tests.benchmark --quick              # 300 rows, 1 round
    python -m tests.benchmark --rows 11000 --rounds 1 --contenders sbert-auto,st-bf16,st-openvino
    python -m tests.benchmark --rows 11000 --rounds 1 --contenders sbert-auto,sbert-int8,st-openvino,st-int8
    python -m tests.benchmark --cache-figures      # re-runs with --cache, 10% new rows, duplicated texts
    python -m tests.benchmark --startup            # only the start-up table (sbert sim A B, a one-row encode, the peer)
    python -m tests.benchmark --device cuda        # on a GPU: 100,000 rows, sbert's defaults vs ST .half() at batch 32/128/512
    python -m tests.benchmark --device cuda --rows 300000 --contenders sbert-auto,st-fp16-512
    python -m tests.benchmark --device cuda --rows 300000 --contenders sbert-auto --profile   # the device path alone, and its kernels
    python -m tests.benchmark --device cuda --oom-check   # 60,000 rows of 256 tokens in one forced batch: recovers

On a GPU the table adds real tokens/s (the corpus' tokens over the time after start-up), the share of the
measured fp16 matmul peak, GPU memory, and every contender's min cosine to ST fp32 on the same GPU.
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

from tests.startup_bench import startup_table

ROOT = Path(__file__).resolve().parent.parent
# The evaluation data: ../shared/data beside the clone, or wherever SBERT_SHARED_DATA points (as for the tests).
SHARED = Path(os.environ.get("SBERT_SHARED_DATA") or ROOT.parent / "shared" / "data")
SETS = [
    "csts/STS-B.valid.data",
    "csts/STS-B.test.data",
    "afqmc/dev.txt",
    "lcqmc/LCQMC.valid.data",
    "bq/BQ.valid.data",
    "pawsx/PAWSX.valid.data",
    "xiaobu/dev.txt",
]
# The test splits and ATEC: more distinct sentences for the GPU's large corpora.
EXTRA_SETS = ["csts/STS-B.train.data", "lcqmc/LCQMC.test.data", "bq/BQ.test.data", "pawsx/PAWSX.test.data", "atec/ATEC.valid.data", "atec/ATEC.test.data"]
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
elif kind == "st-int8":  # the int8 model export_static_quantized_openvino_model saves, loaded as its docs show
    model = SentenceTransformer(model, backend="openvino", device="cpu", model_kwargs={"file_name": "openvino/openvino_model_qint8_quantized.xml"})
else:
    model = SentenceTransformer(model, device=device)
    if device != "cpu" and kind.startswith("st-fp16"):
        model = model.half()  # half precision on CUDA the way sentence-transformers documents it
autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind == "st-bf16")
with autocast:
    vectors = model.encode(texts, batch_size=int(batch_size), convert_to_numpy=True)
values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
table = pa.table({"id": pa.array(range(len(texts))), "embedding": pa.FixedSizeListArray.from_arrays(values, vectors.shape[1])})
pq.write_table(table, out)
gpu = torch.cuda.max_memory_allocated() / 2**20 if device != "cpu" else 0.0
# VmHWM, this program's own peak: ru_maxrss keeps the bench's own peak across the child's fork and exec.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_mib": hwm / 1024, "gpu_mib": gpu}))
'''

# sentence-transformers' int8 OpenVINO model: what export_static_quantized_openvino_model does (optimum-intel's
# OVQuantizer, NNCF static post-training quantization, OVQuantizationConfig's defaults, texts tokenized padded to 384
# as it tokenizes them, 300 samples), calibrated on local texts in place of its default, the hub's glue/sst2.
ST_INT8_EXPORT = r'''
import json, shutil, sys, tempfile
from pathlib import Path
import numpy as np
from sentence_transformers import SentenceTransformer
from optimum.intel.openvino import OVConfig, OVQuantizationConfig, OVQuantizer
source, texts_file, target = sys.argv[1:4]
texts = [json.loads(line)["text"] for line in open(texts_file, encoding="utf-8")]
model = SentenceTransformer(source, backend="openvino", device="cpu")
config = OVConfig(quantization_config=OVQuantizationConfig())
quantizer = OVQuantizer.from_pretrained(model.transformers_model)
tokenize = lambda text: {k: np.asarray(v) for k, v in model.tokenizer(text, padding="max_length", max_length=384, truncation=True).items()}
staging = Path(target + ".partial")
shutil.rmtree(staging, ignore_errors=True)
shutil.copytree(source, staging)
with tempfile.TemporaryDirectory() as saved:
    quantizer.quantize(calibration_dataset=[tokenize(text) for text in texts[:300]], save_directory=saved, ov_config=config)
    [xml] = Path(saved).rglob("openvino_model.xml")  # optimum saves it where ST keeps it: openvino/
    for suffix in (".xml", ".bin"):
        shutil.copy(xml.with_suffix(suffix), staging / "openvino" / f"openvino_model_qint8_quantized{suffix}")
staging.rename(target)
'''

# sbert's child: the command itself, as a user runs it.
SBERT = r'''
import json, resource, sys
from sbert_cli.cli import app
try:
    app(sys.argv[1:])
except SystemExit as done:
    assert not done.code, done.code
torch = sys.modules.get("torch")
gpu = torch.cuda.max_memory_allocated() / 2**20 if torch is not None and torch.cuda.is_initialized() else 0.0
# VmHWM, this program's own peak: ru_maxrss keeps the bench's own peak across the child's fork and exec.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_mib": hwm / 1024, "gpu_mib": gpu}))
'''


@dataclass(frozen=True)
class Contender:
    name: str
    precision: str  # the precision its FLOPs are compared against: fp32, bf16 or fp16
    label: str
    batch_size: int | None = None  # a peer's encode(batch_size=...); None: --batch-size (sbert: its own auto on CUDA)


CPU_CONTENDERS = {
    "sbert-fp32": Contender("sbert-fp32", "fp32", "sbert encode --precision fp32"),
    "sbert-auto": Contender("sbert-auto", "auto", "sbert encode (default: auto)"),
    "sbert-torch": Contender("sbert-torch", "auto", "sbert encode --backend torch"),
    "st-fp32": Contender("st-fp32", "fp32", "sentence-transformers fp32"),
    "st-bf16": Contender("st-bf16", "bf16", "sentence-transformers + autocast bf16"),
    "st-openvino": Contender("st-openvino", "bf16", "sentence-transformers OpenVINO"),
    "sbert-int8": Contender("sbert-int8", "int8", "sbert encode --precision int8"),
    "st-int8": Contender("st-int8", "int8", "sentence-transformers OpenVINO int8 (PTQ)"),
}
# Compared with fp32 vectors of the same corpus (min cosine): sbert --precision fp32 is run once, untimed, for them.
INT8_CONTENDERS = ("sbert-int8", "st-int8")
# What runs at bf16 on a CPU with native bf16 (sbert's default there): left out where bf16 is emulated.
BF16_CONTENDERS = ("sbert-auto", "sbert-torch", "st-bf16", "st-openvino")
# The ratios `make bench` is held to (issue: sbert ahead of ST + OpenVINO on every CPU class): contender, peer, goal.
CPU_GOALS = [
    ("sbert-auto", "st-openvino", 1.1), ("sbert-auto", "st-bf16", 1.0), ("sbert-fp32", "st-fp32", 1.1), ("sbert-auto", "sbert-torch", None),
    # int8 (issue 34): ahead of ST + OpenVINO at its default and of ST's own int8 OpenVINO model
    ("sbert-int8", "st-openvino", 1.5), ("sbert-int8", "st-int8", 1.1), ("sbert-int8", "sbert-auto", None),
]
GPU_CONTENDERS = {
    "sbert-auto": Contender("sbert-auto", "fp16", "sbert encode (defaults: fp16, auto batches)"),
    "st-fp16-32": Contender("st-fp16-32", "fp16", "sentence-transformers .half(), batch 32", 32),
    "st-fp16-128": Contender("st-fp16-128", "fp16", "sentence-transformers .half(), batch 128", 128),
    "st-fp16-512": Contender("st-fp16-512", "fp16", "sentence-transformers .half(), batch 512", 512),
    "st-fp32": Contender("st-fp32", "fp32", "sentence-transformers fp32, batch 128", 128),
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
    """Unique sentences of the seven sets, shuffled with a fixed seed, plus ~10% paragraphs of consecutive sentences.

    Every text is distinct (sbert encodes a repeated text once, sentence-transformers every time). Beyond the
    seven sets' 59,000 sentences (the GPU's corpora), the other files of the data folder are drawn on too, and
    beyond those, the sentences again with a number appended.
    """
    sentences = unique_sentences(SETS)
    wanted = rows - rows // 10
    if wanted > len(sentences):
        sentences = list(dict.fromkeys(sentences + unique_sentences(EXTRA_SETS)))
        copy = 1
        while wanted > len(sentences):
            sentences += [f"{text}（{copy}）" for text in sentences[: wanted - len(sentences)]]
            copy += 1
    rng = random.Random(seed)
    paragraphs: dict[str, None] = {}
    while len(paragraphs) < rows // 10:
        start, target, parts = rng.randrange(len(sentences)), rng.randint(100, 500), []
        while sum(map(len, parts)) < target:
            parts.append(sentences[(start + len(parts)) % len(sentences)])
        paragraphs.setdefault("，".join(parts)[:500], None)
    texts = rng.sample(sentences, wanted) + list(paragraphs)
    rng.shuffle(texts)
    write_corpus(path, texts)
    return texts


def unique_sentences(files: list[str]) -> list[str]:
    """The distinct sentences of pair files (two text fields, then the label), in file order."""
    unique: dict[str, None] = {}
    for name in files:
        for line in (SHARED / name).read_text(encoding="utf-8").split("\n"):
            fields = line.split("\t")
            if len(fields) >= 3:
                for text in fields[:2]:
                    if text.strip():
                        unique.setdefault(text, None)
    return list(unique)


def write_corpus(path: Path, texts: list[str]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for text in texts:
            out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


def matmul_peak(precision: str, device: str = "cpu", seconds: float = 2.0) -> float:
    """Best GFLOP/s of the FFN-shaped matmul (rows x 768 x 3072) the encoder spends its time in."""
    import torch

    from sbert_cli.model.device import available_cores

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


def export_st_int8(python: str, openvino_model: Path, target: Path, work: Path) -> Path:
    """sentence-transformers' int8 OpenVINO model of the stand-in, made once (not timed), calibrated on 300 sentences
    of the evaluation sets' train and test splits (the corpus is drawn from the others)."""
    if (target / "openvino" / "openvino_model_qint8_quantized.xml").exists():
        return target
    texts = work / "st-int8-calibration.jsonl"
    sentences = unique_sentences(EXTRA_SETS)
    write_corpus(texts, random.Random(5).sample(sentences, 300))
    started = time.perf_counter()
    done = subprocess.run([python, "-c", ST_INT8_EXPORT, str(openvino_model), str(texts), str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sentence-transformers' int8 export failed:\n{done.stderr[-3000:]}")
    print(f"sentence-transformers' int8 OpenVINO export (once, not timed): {time.perf_counter() - started:.1f} s")
    return target


@dataclass
class Setup:
    model_dir: Path
    openvino_model: Path | None
    openvino_python: str | None
    device: str
    batch_size: int | None  # for every contender; None: sbert's auto, and each peer's own (ST's is 32)
    st_int8_model: Path | None = None  # sentence-transformers' int8 OpenVINO export of the stand-in


def sbert_command(setup: Setup, corpus: Path, out: Path, *options: str) -> list[str]:
    """`sbert encode` as a user runs it, in a child that prints its peak memory."""
    args = [sys.executable, "-c", SBERT, "encode", str(corpus), "-o", str(out), "--model", str(setup.model_dir), "--device", setup.device]
    if setup.batch_size is not None:
        args += ["--batch-size", str(setup.batch_size)]
    return [*args, *options]


def run_once(contender: Contender, setup: Setup, corpus: Path, out: Path) -> dict:
    """One fresh process, timed whole: interpreter start, imports, model load, encoding, the file on disk."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "true"}
    batch_size = str(setup.batch_size or contender.batch_size or 32)
    if contender.name.startswith("sbert"):
        precision = {"sbert-fp32": "fp32", "sbert-int8": "int8"}.get(contender.name, "auto")
        backend = "torch" if contender.name == "sbert-torch" else "auto"
        # On a GPU its own stage timings come along: which of reading, tokenizing, the device and writing bounds the run.
        shown = "--verbose" if setup.device != "cpu" else "-q"
        args = sbert_command(setup, corpus, out, "--precision", precision, "--backend", backend, shown)
    elif contender.name in ("st-openvino", "st-int8"):
        model = setup.openvino_model if contender.name == "st-openvino" else setup.st_int8_model
        assert setup.openvino_python and model
        args = [setup.openvino_python, "-c", PEER, contender.name, str(model), str(corpus), str(out), "cpu", batch_size]
    else:
        args = [sys.executable, "-c", PEER, contender.name, str(setup.model_dir), str(corpus), str(out), setup.device, batch_size]
    started = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{contender.label} failed:\n{done.stderr[-3000:]}")
    stages = [line.removeprefix("sbert: ") for line in done.stderr.splitlines() if line.startswith("sbert: stages")]
    return {"seconds": seconds, "stages": stages[-1] if stages else "", **json.loads(done.stdout.strip().splitlines()[-1])}


def load_vectors(path: Path):
    import numpy as np
    import pyarrow.parquet as pq

    return np.asarray(pq.read_table(path).column("embedding").to_pylist(), dtype=np.float32)


def report(results: dict[str, list[dict]], startup: dict[str, float], contenders: list[Contender], rows: int, tokens: int, flops: float, peaks: dict[str, float]) -> None:
    from sbert_cli.model.device import pick_precision

    median = {name: statistics.median(run["seconds"] for run in runs) for name, runs in results.items()}
    base = median.get("st-fp32")
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
    for ours, peer, goal in CPU_GOALS:
        if ours in median and peer in median:
            ratio = median[peer] / median[ours]
            verdict = "" if goal is None else f" (goal >= {goal:.2f}: {'met' if ratio >= goal else 'NOT met'})"
            print(f"{ours} vs {peer}: {ratio:.2f}x{verdict}")
    print(f"corpus: {rows} rows, {tokens} real tokens ({tokens / rows:.1f} a row), {flops / 1e12:.2f} TFLOP a pass")


def report_gpu(results: dict[str, list[dict]], startup: dict[str, float], contenders: list[Contender], rows: int, tokens: int, flops: float, peaks: dict[str, float]) -> None:
    """The GPU table: whole-process seconds, and real tokens/s and the share of the matmul peak after start-up."""
    median = {name: statistics.median(run["seconds"] for run in runs) for name, runs in results.items()}
    header = f"{'contender':46} {'seconds':>8} {'rows/s':>8} {'tokens/s':>10} {'% of peak':>12} {'start s':>7} {'GPU MiB':>8} {'RSS MiB':>8}"
    print(header)
    print("-" * len(header))
    after_startup = {name: max(seconds - startup.get(name, 0.0), 1e-9) for name, seconds in median.items()}
    for contender in contenders:
        if contender.name not in median:
            continue
        seconds, encoding = median[contender.name], after_startup[contender.name]
        share = f"{100 * flops / (peaks[contender.precision] * 1e9) / encoding:5.1f}% {contender.precision}"
        runs = results[contender.name]
        gpu, rss = max(run["gpu_mib"] for run in runs), max(run["peak_mib"] for run in runs)
        print(f"{contender.label:46} {seconds:8.1f} {rows / seconds:8.0f} {tokens / encoding:10.0f} {share:>12} {startup.get(contender.name, float('nan')):7.1f} {gpu:8.0f} {rss:8.0f}")
    for peer in ("st-fp16-32", "st-fp16-128", "st-fp16-512"):
        if peer in median and "sbert-auto" in median:
            print(
                f"sbert default vs {peer}: {median[peer] / median['sbert-auto']:.2f}x whole process, "
                f"{after_startup[peer] / after_startup['sbert-auto']:.2f}x after start-up"
            )
    print(f"corpus: {rows} rows, {tokens} real tokens ({tokens / rows:.1f} a row), {flops / 1e12:.2f} TFLOP a pass")


def gpu_description() -> str:
    """The GPU's name, its driver, and the torch and CUDA versions the run used."""
    import torch

    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    name = torch.cuda.get_device_name(0)
    return f"{name}, driver {driver or 'unknown'}, torch {torch.__version__}, CUDA {torch.version.cuda}"


def oom_check(setup: Setup, work: Path, rows: int) -> None:
    """60,000 rows of 256 tokens in one batch the GPU cannot hold: the run cuts its budget, finishes, and matches
    a default run (the out-of-memory acceptance of the pressure issue)."""
    from sbert_cli.similarity import cosine_rows

    sentences = unique_sentences(SETS)
    rng = random.Random(3)
    texts = []
    for index in range(rows):  # distinct, and over 256 tokens before truncation
        parts = [str(index)]
        while sum(map(len, parts)) < 300:
            parts.append(sentences[rng.randrange(len(sentences))])
        texts.append("，".join(parts))
    corpus = work / f"oom-{rows}.jsonl"
    write_corpus(corpus, texts)
    forced_options = ("--chunk-size", str(rows), "--batch-size", str(rows), "--max-tokens", "100000000", "--verbose")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name, options in (("default", ("-q",)), ("forced", forced_options)):
        started = time.perf_counter()
        done = subprocess.run(sbert_command(setup, corpus, work / f"oom-{name}.parquet", *options), cwd=ROOT, env=env, capture_output=True, text=True)
        print(f"{name} run ({' '.join(options)}): exit {done.returncode}, {time.perf_counter() - started:.1f} s")
        for line in done.stderr.strip().splitlines()[-4:]:
            print(f"  {line}")
        if done.returncode != 0:
            return
    cosine = cosine_rows(load_vectors(work / "oom-forced.parquet"), load_vectors(work / "oom-default.parquet")).min()
    print(f"{rows} rows of 256 tokens: min cosine of the forced run to the default run {cosine:.6f}")


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
        started = time.perf_counter()
        args = sbert_command(setup, work / corpus, work / out, "-q", *options)
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
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: sbert's defaults against sentence-transformers at fp16")
    parser.add_argument("--batch-size", type=int, help="rows a batch for every contender (default: sbert's auto and each peer's own)")
    parser.add_argument("--profile", action="store_true", help="on CUDA, after the table: sbert's forward alone on one window, and the kernels it spends its time in")
    parser.add_argument("--oom-check", action="store_true", help="on CUDA: 60,000 rows of 256 tokens forced into one batch, against a default run")
    parser.add_argument("--openvino-python", help="an interpreter that already has sentence-transformers[openvino] and pyarrow")
    parser.add_argument("--cache-figures", action="store_true", help="time --cache re-runs and duplicated texts instead")
    parser.add_argument("--startup", action="store_true", help="only the start-up table (tests/startup_bench.py)")
    parser.add_argument("--workdir", default=str(ROOT / "bench_out"))
    args = parser.parse_args()
    if not (SHARED / SETS[0]).exists():
        raise SystemExit(f"make bench needs the evaluation data at {SHARED} (the evaluation sets, config and vocab); set SBERT_SHARED_DATA=/path/to/data")
    sys.path.insert(0, str(ROOT))
    work = Path(args.workdir)
    work.mkdir(exist_ok=True)
    gpu = args.device != "cpu"
    rows = args.rows or (300 if args.quick else 100_000 if gpu else 2200)
    rounds = args.rounds or (1 if args.quick or gpu else 2)
    model_dir = build_standin(work / "standin")
    print(f"CPU: {cpu_description()}")
    if gpu:
        print(f"GPU: {gpu_description()}")
    setup = Setup(model_dir, None, None, args.device, args.batch_size)
    if args.cache_figures:
        cache_figures(setup, work, rows)
        return
    if args.oom_check:
        oom_check(setup, work, args.rows or 60_000)
        return
    table = GPU_CONTENDERS if gpu else CPU_CONTENDERS
    from sbert_cli.model.device import cpu_has_native_bf16

    bf16 = args.device != "cpu" or cpu_has_native_bf16()
    if args.contenders or args.rows or args.quick or gpu:
        names = args.contenders.split(",") if args.contenders else list(table)
        groups = [(rows, names)]
    else:
        # The default CPU run: fp32 against ST fp32 on 2,200 rows, then sbert's default against ST bf16 and
        # ST + OpenVINO on a batch job's 11,000 rows (with sbert on torch's backend alongside).
        groups = [(2200, ["sbert-fp32", "st-fp32"]), (11_000, ["sbert-auto", "sbert-torch", "st-bf16", "st-openvino", "sbert-int8", "st-int8"])]
    if not bf16 and not args.contenders:
        print("bf16: not measured: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 is emulated and slower than fp32")
        kept = [(group_rows, [name for name in names if name not in BF16_CONTENDERS]) for group_rows, names in groups]
        groups = [(group_rows, names) for group_rows, names in kept if names]
    if any("st-openvino" in names or "st-int8" in names for _, names in groups):
        setup.openvino_python = openvino_python(work, args.openvino_python)
        setup.openvino_model = export_openvino(setup.openvino_python, model_dir, work / "standin-openvino")
    if any("st-int8" in names for _, names in groups):
        assert setup.openvino_python and setup.openvino_model
        setup.st_int8_model = export_st_int8(setup.openvino_python, setup.openvino_model, work / "standin-openvino-int8", work)
    if not gpu:
        prepare_sbert(model_dir, int8=any("sbert-int8" in names for _, names in groups))
    if not (args.contenders or args.rows) or args.startup:
        # sbert sim A B and a one-row encode, whole processes, against their goals; on a GPU too, wherever one is at hand
        startup_table(model_dir, work, args.device, 3 if gpu else 5, setup.openvino_python, setup.openvino_model)
        if args.startup:
            return
    for group_rows, names in groups:
        run_group(setup, work, [table[name] for name in names], group_rows, rounds, gpu)
    if args.profile and gpu:
        device_profile(setup, work / f"corpus-{groups[-1][0]}.jsonl")


def prepare_sbert(model_dir: Path, int8: bool = False) -> None:
    """What sbert does once per model, untimed (as ST's OpenVINO export is): its OpenVINO conversion, when it uses one,
    and its int8 quantization with the quality gate's figures."""
    from sbert_cli.encoder import load_encoder

    started = time.perf_counter()
    encoder = load_encoder(str(model_dir), device="cpu")
    print(f"sbert's default backend here: {encoder.backend.name} (first load, with any one-time conversion: {time.perf_counter() - started:.1f} s)")
    if int8:
        started = time.perf_counter()
        quantized = load_encoder(str(model_dir), device="cpu", precision="int8")
        figures = ", ".join(f"{name} {value}" for name, value in quantized.info.quality)
        print(f"sbert --precision int8: {quantized.backend.name} (first load, with its one-time quantization: {time.perf_counter() - started:.1f} s; gate: {figures})")


def run_group(setup: Setup, work: Path, contenders: list[Contender], rows: int, rounds: int, gpu: bool) -> None:
    """One table: the contenders on one corpus, start-up runs first, then interleaved rounds."""
    device = setup.device
    corpus, tiny = work / f"corpus-{rows}.jsonl", work / "corpus-1.jsonl"
    texts = build_corpus(corpus, rows)
    write_corpus(tiny, texts[:1])
    tokens, flops = corpus_flops(setup.model_dir, texts)
    precisions = ["fp16", "fp32"] if gpu else ["fp32", "bf16"]
    peaks = {p: matmul_peak(p, device) for p in precisions}
    results: dict[str, list[dict]] = {}
    startup: dict[str, float] = {}
    print(f"\n{rows:,} rows: {', '.join(c.name for c in contenders)}", flush=True)
    for contender in contenders:
        startup[contender.name] = run_once(contender, setup, tiny, work / "startup.parquet")["seconds"]
    for round_index in range(rounds):
        for contender in contenders if round_index % 2 == 0 else contenders[::-1]:
            result = run_once(contender, setup, corpus, work / f"out-{contender.name}.parquet")
            results.setdefault(contender.name, []).append(result)
            print(f"  round {round_index + 1}: {contender.label:40} {rows / result['seconds']:7.1f} rows/s", flush=True)
            if result["stages"]:
                print(f"    {result['stages']}", flush=True)
    peaks = {p: max(peaks[p], matmul_peak(p, device)) for p in precisions}  # the best of before and after
    print(f"\nGPU: {gpu_description()}" if gpu else f"\nCPU: {cpu_description()}")
    shape = "65536" if gpu else "2048"
    print(f"matmul peak ({shape} x 768 x 3072): " + ", ".join(f"{p} {peaks[p]:.0f} GFLOP/s" for p in precisions))
    (report_gpu if gpu else report)(results, startup, contenders, rows, tokens, flops, peaks)
    parity(work, contenders, setup, corpus)
    print("times are medians over rounds of whole processes (start to Parquet on disk); start-up is the same process on one row")


def device_profile(setup: Setup, corpus: Path, window: int = 50_000) -> None:
    """sbert's device path alone (padding, staging, forward, pooling, the copy back) on one window of the corpus,
    in this process: the first pass (every batch shape new, as in a run) and a second (its ceiling with reading,
    tokenizing and writing taken away), how busy the host thread is, and the GPU kernels the time goes to."""
    import numpy as np
    import torch

    from sbert_cli.encoder import load_encoder
    from sbert_cli.plan import BatchPlan

    with corpus.open(encoding="utf-8") as lines:
        texts = [json.loads(line)["text"] for _, line in zip(range(window), lines)]
    encoder = load_encoder(str(setup.model_dir), device=setup.device)
    tokens = encoder.tokenize(texts)
    batches = BatchPlan().for_device(setup.device).cut(tokens.lengths)
    out = np.zeros((len(tokens), encoder.info.dim), np.float32)
    synchronize = torch.cuda.synchronize if setup.device != "cpu" else lambda: None
    first = time.perf_counter()
    encoder.embed_batches(tokens, batches, out, lambda rows: None)  # every shape new: what a run's windows meet
    synchronize()
    first = time.perf_counter() - first
    wall, host = time.perf_counter(), time.thread_time()
    encoder.embed_batches(tokens, batches, out, lambda rows: None)
    host, wall = time.thread_time() - host, time.perf_counter() - wall
    real = int(tokens.lengths.sum())
    print(f"\nsbert's device path alone, {len(texts):,} rows in {len(batches)} batches: {real / wall:,.0f} real tokens/s ({wall:.2f} s; the host thread busy {host:.2f} s of it); the first pass, every shape new: {first:.2f} s")
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if setup.device != "cpu" else [])
    with torch.profiler.profile(activities=activities) as profiler:
        encoder.embed_batches(tokens, batches[: max(1, len(batches) // 4)], out, lambda rows: None)
        synchronize()
    print(profiler.key_averages().table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=60))


def parity(work: Path, contenders: list[Contender], setup: Setup | None = None, corpus: Path | None = None) -> None:
    """Min cosine to fp32 vectors of the same corpus: to ST fp32 when it ran; for int8 contenders, to sbert
    --precision fp32 (run once here, untimed, when it did not run)."""
    from sbert_cli.similarity import cosine_rows

    names = {c.name for c in contenders}
    reference = "st-fp32" if "st-fp32" in names else None
    if reference is not None:
        theirs = load_vectors(work / f"out-{reference}.parquet")
        for name in sorted(names - {reference}):
            cosine = cosine_rows(load_vectors(work / f"out-{name}.parquet"), theirs).min()
            print(f"min cosine to sentence-transformers fp32: {name} {cosine:.6f}")
    quantized = sorted(names & set(INT8_CONTENDERS))
    if not quantized or setup is None or corpus is None:
        return
    if "sbert-fp32" not in names:
        run_once(CPU_CONTENDERS["sbert-fp32"], setup, corpus, work / "out-sbert-fp32.parquet")
    fp32 = load_vectors(work / "out-sbert-fp32.parquet")
    for name in quantized:
        cosine = cosine_rows(load_vectors(work / f"out-{name}.parquet"), fp32)
        print(f"int8 against fp32 (sbert --precision fp32): {name} min cosine {cosine.min():.6f}, mean {cosine.mean():.6f}")


if __name__ == "__main__":
    main()
