"""Start-up: the OpenVINO path runs without torch, its numpy pooling equals torch's, and OpenVINO's compiled models
are reused across runs without mixing precisions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sbert_cli.backends import numpy_pooling
from sbert_cli.backends.pooling import Pooling, sentence_vectors
from sbert_cli.model.device import cpu_has_native_bf16
from sbert_cli.model.modules import NormalizeLayer, TruncateLayer
from tests.conftest import ROOT, sample_texts
from tests.test_cli import read_output, run

# A copy of the session's tiny model without what earlier tests derived from it (its conversion, its saved tokenizer).
DERIVED = shutil.ignore_patterns("sbert-openvino", "sbert-tokenizer")
MODES = ["mean", "cls", "max", "lasttoken", "weightedmean", "mean_sqrt_len"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("skip", [0, 2])
def test_numpy_pooling_equals_torchs(mode: str, skip: int) -> None:
    torch = pytest.importorskip("torch")
    generator = np.random.default_rng(7)
    hidden = generator.normal(size=(9, 13, 16)).astype(np.float32)
    lengths = np.array([13, 1, 5, 2, 13, 7, 3, 12, 4])  # a row shorter than the prompt's skip too
    mask = np.arange(13) < lengths[:, None]
    layers = (TruncateLayer(8), NormalizeLayer())
    pooling = Pooling(mode, skip)
    ours = numpy_pooling.sentence_vectors(hidden, mask, pooling, layers)
    head = lambda vectors: torch.nn.functional.normalize(vectors[:, :8], p=2, dim=1)  # noqa: E731 -- the same layers in torch
    theirs = sentence_vectors(torch.from_numpy(hidden), torch.from_numpy(mask), pooling, head).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def sbert_child(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """sbert in a process of its own, printing after the command whether torch was ever imported."""
    code = "import sys; from sbert_cli.cli import app\ntry:\n    app(sys.argv[1:])\nexcept SystemExit:\n    pass\nprint('torch imported:', 'torch' in sys.modules, file=sys.stderr)"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=300)


@pytest.mark.slow
def test_the_openvino_path_never_imports_torch_once_the_model_is_converted(tmp_path: Path, tiny_model_dir: Path) -> None:
    pytest.importorskip("openvino", reason="the OpenVINO backend is not installed")
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model", ignore=DERIVED))
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    common = ["--model", str(model), "--backend", "openvino", "--precision", "fp32"]
    first = sbert_child("sim", "hello", "world", *common, env=env)  # converts the model (with torch) and compiles it
    assert first.returncode == 0, first.stderr
    assert "torch imported: True" in first.stderr
    again = sbert_child("sim", "hello", "world", *common, env=env)
    assert again.returncode == 0, again.stderr
    assert "torch imported: False" in again.stderr and again.stdout == first.stdout
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "hello"}\n', encoding="utf-8")
    encoded = sbert_child("encode", str(source), "-o", str(tmp_path / "one.parquet"), "-q", *common, env=env)
    assert encoded.returncode == 0, encoded.stderr
    assert "torch imported: False" in encoded.stderr


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="OpenVINO runs bf16 only on CPUs with native bf16")
def test_compiled_models_are_reused_per_precision(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino", reason="the OpenVINO backend is not installed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model", ignore=DERIVED))
    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"text": "{text}"}}\n' for text in sample_texts()[:8]), encoding="utf-8")

    def encode(name: str, *options: str) -> np.ndarray:
        result = run("encode", source, "-o", tmp_path / f"{name}.parquet", "--model", model, "-q", *options)
        assert result.exit_code == 0, result.output
        return read_output(tmp_path / f"{name}.parquet", "")[1]

    torch_fp32 = encode("torch", "--backend", "torch", "--precision", "fp32")
    bf16 = encode("bf16", "--backend", "openvino", "--precision", "bf16")
    fp32 = encode("fp32", "--backend", "openvino", "--precision", "fp32")  # compiled anew: not the bf16 one
    np.testing.assert_allclose(fp32, torch_fp32, atol=1e-4)
    assert not np.array_equal(bf16, fp32)
    compiled = tmp_path / "cache" / "sbert" / "openvino-compiled"
    assert len([folder for folder in compiled.iterdir() if any(folder.glob("*.blob"))]) == 2  # one per precision
    np.testing.assert_array_equal(encode("fp32-again", "--backend", "openvino", "--precision", "fp32"), fp32)  # from its cache
    np.testing.assert_array_equal(encode("bf16-again", "--backend", "openvino", "--precision", "bf16"), bf16)


def test_version_says_what_auto_picks_here_as_a_run_picks_it(tiny_model_dir: Path) -> None:
    from sbert_cli.encoder import load_encoder

    result = run("--version")
    assert result.exit_code == 0, result.output
    version, choice = result.output.splitlines()
    assert version.startswith("sbert ")
    encoder = load_encoder(str(tiny_model_dir))  # every option auto, as a run with no options
    backend = "openvino" if encoder.backend.name == "openvino" else "torch"
    assert choice.startswith(f"auto here: --device {encoder.info.device} --backend {backend} --precision {encoder.info.precision} (")


@pytest.mark.skipif(os.path.exists("/proc/driver/nvidia/version"), reason="with a GPU driver loaded, --version asks torch whether it sees the GPU")
def test_version_imports_neither_torch_nor_openvino() -> None:
    code = "import sys; from sbert_cli.cli import app\ntry:\n    app(['--version'])\nexcept SystemExit:\n    pass\nprint(sorted({'torch', 'openvino', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_a_plain_install_brings_openvino_where_auto_would_pick_it() -> None:
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml itself")
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    [openvino] = [Requirement(line) for line in project["dependencies"] if line.startswith("openvino")]
    assert openvino.marker is not None
    for platform, machine, expected in [("linux", "x86_64", True), ("win32", "AMD64", True), ("darwin", "arm64", False), ("linux", "aarch64", False)]:
        assert openvino.marker.evaluate({"sys_platform": platform, "platform_machine": machine}) is expected, (platform, machine)


@pytest.mark.slow
def test_a_model_that_cannot_be_written_prepared_by_two_runs_at_once(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Both runs succeed with the same vectors; one conversion, one saved tokenizer and no temporary folder are left in
    the user's cache; the run after them prepares nothing."""
    pytest.importorskip("openvino", reason="the OpenVINO backend is not installed")
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model", ignore=DERIVED))
    for folder in ("sbert-openvino", "sbert-tokenizer"):
        shutil.rmtree(model / folder, ignore_errors=True)
        (model / folder).write_text("in the way\n")  # the folders cannot be made there, as in a model others own
    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"text": "{text}"}}\n' for text in sample_texts()[:8]), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def command(name: str) -> list[str]:
        return [sys.executable, "-m", "sbert_cli", "encode", str(source), "-o", str(tmp_path / f"{name}.parquet"), "--model", str(model), "--backend", "openvino", "--precision", "fp32"]

    runs = [subprocess.Popen(command(name), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for process in runs:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    np.testing.assert_array_equal(read_output(tmp_path / "a.parquet", "")[1], read_output(tmp_path / "b.parquet", "")[1])
    for kind in ("openvino", "tokenizers"):
        [kept] = list((tmp_path / "cache" / "sbert" / kind).iterdir())  # one folder, no staging left beside it
        assert (kept / "options.json").is_file()
    after = subprocess.run(command("c"), env=env, capture_output=True, text=True, timeout=300)
    assert after.returncode == 0 and "one-time" not in after.stderr, after.stderr


def test_openvino_is_imported_without_its_converter_and_converts_all_the_same() -> None:
    pytest.importorskip("openvino", reason="the OpenVINO backend is not installed")
    code = (
        "import sys\n"
        "from sbert_cli.backends.openvino_runtime import openvino_runtime\n"
        "openvino = openvino_runtime()\n"
        "print('converter loaded:', 'openvino.tools.ovc' in sys.modules, openvino.Core is not None)\n"
        "from openvino.tools.ovc import convert_model\n"
        "print('converter after:', callable(convert_model))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["converter loaded: False True", "converter after: True"]
