"""`make bench`'s start-up table: whole processes on a model already converted, best of 5, as a user types them.

    python -m tests.startup_bench                  # on the bench's stand-in (bench_out/standin), CPU
    python -m tests.startup_bench --device cuda    # on a GPU: one row through the GPU, process start to file on disk

sbert sim A B and sbert encode of one row are held to their goals (0.8 s and 1.0 s on a CPU, 4 s on a GPU); the
peer is sentence-transformers loading the same model and encoding the same two sentences, in a process of its own.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The console script a user runs; where sbert is not installed as a package (a GPU machine's checkout), its module.
SCRIPT = Path(sys.executable).parent / "sbert"
SBERT = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "sbert_cli"]
PAIR = ("如何申请退款？", "怎么才能把钱退回来？")
PEER = r'''
import sys
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device=sys.argv[2], **({"backend": "openvino"} if sys.argv[3] == "openvino" else {}))
print(float(model.similarity(*model.encode(list(sys.argv[4:6]), convert_to_tensor=True)[:, None])[0][0]))
'''
GOALS = {"cpu": {"sbert sim A B": 0.8, "sbert encode, one row": 1.0}, "cuda": {"sbert encode, one row": 4.0}}


def best_of(command: list[str], times: int, env: dict[str, str]) -> float:
    """The fastest of `times` whole processes (the least disturbed by the rest of the machine)."""
    best = float("inf")
    for _ in range(times):
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        best = min(best, seconds)
    return best


def startup_table(model_dir: Path, work: Path, device: str = "cpu", times: int = 5, openvino_python: str | None = None, openvino_model: Path | None = None) -> None:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true"}
    one_row = work / "corpus-1-startup.jsonl"
    one_row.write_text('{"text": "%s"}\n' % PAIR[0], encoding="utf-8")
    sbert_model = ["--model", str(model_dir), "--device", device]
    sim = [*SBERT, "sim", *PAIR, *sbert_model]
    encode = [*SBERT, "encode", str(one_row), "-o", str(work / "startup-one.parquet"), "-q", *sbert_model]
    subprocess.run(sim, env=env, capture_output=True, check=True)  # a first run: conversions and compiled models made, untimed
    contenders = {"sbert sim A B": sim, "sbert encode, one row": encode}
    contenders["sentence-transformers, load and encode A B"] = [sys.executable, "-c", PEER, str(model_dir), device, "torch", *PAIR]
    if openvino_python and openvino_model and device == "cpu":
        contenders["sentence-transformers + OpenVINO, load and encode A B"] = [openvino_python, "-c", PEER, str(openvino_model), "cpu", "openvino", *PAIR]
    print(f"\nstart-up, whole processes on a converted model, best of {times} ({device}):")
    for label, command in contenders.items():
        seconds = best_of(command, times, env)
        goal = GOALS[device].get(label)
        verdict = "" if goal is None else f"   (goal <= {goal:.1f} s: {'met' if seconds <= goal else 'NOT met'})"
        print(f"  {label:55} {seconds:6.2f} s{verdict}")


def main() -> None:
    from tests.benchmark import build_standin, cpu_description

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--times", type=int, default=5)
    parser.add_argument("--workdir", default=str(ROOT / "bench_out"))
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(exist_ok=True)
    print(f"CPU: {cpu_description()}")
    startup_table(build_standin(work / "standin"), work, args.device, args.times)


if __name__ == "__main__":
    main()
