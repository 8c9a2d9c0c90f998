"""The OpenVINO backend: converted once and kept beside the model, chosen by --backend, and as exact as torch's."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from sbert_cli.backends import openvino_bert, openvino_export
from sbert_cli.embedding import embed_texts
from sbert_cli.encoder import load_encoder
from sbert_cli.errors import UsageError
from sbert_cli.plan import BatchPlan
from sbert_cli.similarity import cosine_rows
from tests.conftest import sample_texts
from tests.test_cli import error_of, read_output, run

pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install -e '.[openvino]'")

CONVERSIONS = "sbert-openvino"


@pytest.fixture
def model_copy(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """The tiny BERT in a folder of this test's own, so that its conversions are this test's alone."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model", ignore=shutil.ignore_patterns(CONVERSIONS)))


def jsonl(*texts: str) -> bytes:
    return "".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts).encode()


def conversions(model_dir: Path) -> list[Path]:
    folder = model_dir / CONVERSIONS
    return sorted(folder.iterdir()) if folder.exists() else []


def test_a_conversion_is_made_once_whole_and_reused(model_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = load_encoder(str(model_copy), device="cpu", precision="fp32", backend="openvino")
    assert encoder.backend.name == "openvino"
    [made] = conversions(model_copy)  # one folder, no staging folder left beside it
    assert sorted(path.name for path in made.iterdir()) == ["model.bin", "model.xml", "options.json"]
    options = json.loads((made / "options.json").read_text(encoding="utf-8"))
    assert options["weights"]["file"] == "model.safetensors" and options["config"]["hidden_size"] == 32

    def no_second_conversion(model: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(openvino_export, "trace_openvino", no_second_conversion)
    again = load_encoder(str(model_copy), device="cpu", precision="fp32", backend="openvino")
    texts = sample_texts()[:6]
    np.testing.assert_allclose(embed_texts(texts, again), embed_texts(texts, encoder), atol=1e-6)
    assert conversions(model_copy) == [made]


def test_changed_weights_are_converted_anew(model_copy: Path) -> None:
    """New weights of the same size in the same file: a new conversion, whose vectors are the new weights' (as torch's
    backend computes them from the changed checkpoint), not the old conversion's."""
    from safetensors.numpy import load_file, save_file

    texts = sample_texts()[:8]
    old = embed_texts(texts, load_encoder(str(model_copy), device="cpu", precision="fp32", backend="openvino"))
    weights = model_copy / "model.safetensors"
    before = weights.stat()
    changed = {name: value * np.float32(1.5) if value.dtype.kind == "f" else value for name, value in load_file(weights).items()}
    save_file(changed, weights, metadata={"format": "pt"})
    assert weights.stat().st_size == before.st_size
    # Rewritten a second later: a file system whose times are coarse would give the rewrite the same time.
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    new = embed_texts(texts, load_encoder(str(model_copy), device="cpu", precision="fp32", backend="openvino"))
    assert len(conversions(model_copy)) == 2
    torch_new = embed_texts(texts, load_encoder(str(model_copy), device="cpu", precision="fp32", backend="torch"))
    np.testing.assert_allclose(new, torch_new, atol=1e-4)
    assert np.abs(new - old).max() > 1e-2  # not the old weights' vectors


class Killed(BaseException):
    """The process dies here: no exception handler and no clean-up of sbert's runs after it (as with SIGKILL)."""


def test_a_conversion_killed_midway_is_never_used_and_the_next_run_converts_anew(model_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from sbert_cli.model import derived

    real_convert = openvino_export._convert_into

    def killed_midway(model: object, staging: Path) -> bool:
        real_convert(model, staging)
        weights = staging / "model.bin"
        os.truncate(weights, weights.stat().st_size // 2)  # killed while the weights were being written
        raise Killed

    monkeypatch.setattr(openvino_export, "_convert_into", killed_midway)
    monkeypatch.setattr(derived, "shutil", SimpleNamespace(rmtree=lambda path, ignore_errors=False: None))  # a dead process removes nothing
    with pytest.raises(Killed):
        load_encoder(str(model_copy), device="cpu", precision="fp32", backend="openvino")
    [left] = conversions(model_copy)  # what the kill left: a hidden staging folder, half-written, never under a key's name
    assert left.name.startswith(".") and sorted(path.name for path in left.iterdir()) == ["model.bin", "model.xml"]
    monkeypatch.undo()

    traced = []
    real_trace = openvino_export.trace_openvino

    def counted(model: object) -> object:
        traced.append(model)
        return real_trace(model)

    monkeypatch.setattr(openvino_export, "trace_openvino", counted)
    texts = sample_texts()[:8]
    ours = embed_texts(texts, load_encoder(str(model_copy), device="cpu", precision="fp32", backend="openvino"))
    assert len(traced) == 1  # converted anew, not taken from what the killed run left
    [made] = [path for path in conversions(model_copy) if not path.name.startswith(".")]
    assert sorted(path.name for path in made.iterdir()) == ["model.bin", "model.xml", "options.json"]
    assert (left / "model.bin").stat().st_size < (made / "model.bin").stat().st_size
    torch_vectors = embed_texts(texts, load_encoder(str(model_copy), device="cpu", precision="fp32", backend="torch"))
    np.testing.assert_allclose(ours, torch_vectors, atol=1e-4)


def test_a_model_folder_that_cannot_hold_it_sends_it_to_the_user_cache(model_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (model_copy / CONVERSIONS).write_text("in the way\n")  # the folder cannot be made there (as in a read-only model)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    encoder = load_encoder(str(model_copy), device="cpu", precision="fp32", backend="openvino")
    assert encoder.backend.name == "openvino"
    [made] = (tmp_path / "cache" / "sbert" / "openvino").iterdir()
    assert (made / "model.xml").is_file()
    assert (model_copy / CONVERSIONS).read_text() == "in the way\n"


def test_a_conversion_does_not_change_the_models_identity_in_the_vector_cache(model_copy: Path, tmp_path: Path) -> None:
    from sbert_cli.cache import VectorCache

    cache = VectorCache(str(tmp_path / "vectors.sqlite"))
    before = cache.profile("tiny", model_copy, {"dim": 32})
    load_encoder(str(model_copy), device="cpu", precision="fp32", backend="openvino")
    assert conversions(model_copy)
    assert cache.profile("tiny", model_copy, {"dim": 32}) == before


def test_openvino_matches_torch_at_fp32_across_batches_in_flight(model_copy: Path) -> None:
    """Many small batches (more than the requests kept in flight), mixed lengths: each vector lands on its row."""
    texts = sample_texts() * 3
    plan = BatchPlan(batch_size=3, max_tokens=200)
    ours = embed_texts(texts, load_encoder(str(model_copy), device="cpu", precision="fp32", backend="openvino"), plan)
    torch_vectors = embed_texts(texts, load_encoder(str(model_copy), device="cpu", precision="fp32", backend="torch"), plan)
    assert cosine_rows(ours, torch_vectors).min() >= 0.99999
    np.testing.assert_allclose(ours, torch_vectors, atol=1e-4)


def test_openvino_vectors_do_not_depend_on_their_batch(model_copy: Path) -> None:
    """Padding invariance: a text alone, or padded beside longer ones, gets the same vector."""
    encoder = load_encoder(str(model_copy), device="cpu", precision="fp32", backend="openvino")
    texts = sample_texts()
    alone = np.concatenate([embed_texts([text], encoder) for text in texts])
    together = embed_texts(texts, encoder, BatchPlan(batch_size=64, max_tokens=10_000, batch_cost=10_000))
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_backend_choices(model_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_encoder(str(model_copy), device="cpu", precision="fp32", backend="torch").backend.name == "onednn-bert"
    monkeypatch.setattr(openvino_bert, "cpu_has_native_bf16", lambda: True)
    assert load_encoder(str(model_copy), device="cpu", precision="fp32").backend.name == "openvino"
    # Where OpenVINO was not measured ahead (CPUs without native bf16), auto keeps torch's oneDNN backend.
    monkeypatch.setattr(openvino_bert, "cpu_has_native_bf16", lambda: False)
    assert load_encoder(str(model_copy), device="cpu", precision="fp32").backend.name == "onednn-bert"
    assert load_encoder(str(model_copy), device="cpu", precision="fp32", backend="openvino").backend.name == "openvino"
    # Not installed: auto goes on without it; asking for it is a one-line error.
    monkeypatch.setattr(openvino_bert, "find_spec", lambda name: None)
    monkeypatch.setattr(openvino_bert, "cpu_has_native_bf16", lambda: True)
    assert load_encoder(str(model_copy), device="cpu", precision="fp32").backend.name == "onednn-bert"
    with pytest.raises(UsageError) as error:
        load_encoder(str(model_copy), device="cpu", precision="fp32", backend="openvino")
    assert str(error.value) == "--backend openvino: OpenVINO is not installed; pip install 'sbert-cli[openvino]', or pass --backend auto"


def test_backend_openvino_where_it_cannot_run_is_one_line(tmp_path: Path, model_copy: Path) -> None:
    out = tmp_path / "out.parquet"
    result = run("encode", "-", "-o", out, "--model", model_copy, "--backend", "openvino", "--precision", "fp16", "-q", input=jsonl("你好"))
    assert result.exit_code == 2
    assert error_of(result) == (
        f"sbert: error: --backend openvino: {model_copy} cannot run there (it runs BERT models at fp32, or bf16 where the CPU has it, "
        "on --device cpu); pass --backend auto"
    )
    assert not out.exists()


def test_encode_with_backend_openvino(tmp_path: Path, model_copy: Path) -> None:
    out = tmp_path / "out.parquet"
    result = run("encode", "-", "-o", out, "--model", model_copy, "--backend", "openvino", "--precision", "fp32", "-q", input=jsonl("你好", "世界"))
    assert result.exit_code == 0, result.output
    ids, vectors = read_output(out, "")
    assert ids == [0, 1] and vectors.shape == (2, 32)


@pytest.mark.slow
def test_openvino_fp32_matches_sentence_transformers(minilm_dir: Path) -> None:
    from tests.test_encoder import MIXED_TEXTS, reference_vectors

    texts = MIXED_TEXTS + sample_texts()
    ours = embed_texts(texts, load_encoder(str(minilm_dir), device="cpu", precision="fp32", backend="openvino"), BatchPlan(batch_size=5, max_tokens=600))
    assert cosine_rows(ours, reference_vectors(minilm_dir, texts)).min() >= 0.99999


def test_a_model_openvino_cannot_convert(model_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto goes on with torch's backend; asked for by name, it is one line naming the model and the way out."""
    from sbert_cli.errors import ModelError

    def fails(model: object) -> None:
        raise RuntimeError("Exception from src/frontends/pytorch: unsupported operation\nmore detail")

    monkeypatch.setattr(openvino_export, "trace_openvino", fails)
    monkeypatch.setattr(openvino_bert, "cpu_has_native_bf16", lambda: True)
    assert load_encoder(str(model_copy), device="cpu", precision="fp32").backend.name == "onednn-bert"
    with pytest.raises(ModelError) as error:
        load_encoder(str(model_copy), device="cpu", precision="fp32", backend="openvino")
    assert str(error.value) == (
        f"{model_copy}: OpenVINO could not convert or compile this model: Exception from src/frontends/pytorch: unsupported operation; "
        "pass --backend torch"
    )
    assert conversions(model_copy) == []  # nothing half-made left behind


def test_one_process_at_a_time_compiles_into_the_model_cache(model_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO's cache writer is not safe across processes (two runs compiling into an empty cache at once: one failed
    with 'cannot set permissions: No such file'): a compile waits for the folder's lock, then finishes."""
    import fcntl
    import threading

    from sbert_cli.model.description import describe_model
    from sbert_cli.model.options import ModelOptions

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    xml = openvino_export.converted_model(describe_model(ModelOptions(str(model_copy), "cpu", "fp32")))
    assert xml is not None
    openvino = openvino_bert.openvino_runtime()
    folder = openvino_bert.compiled_cache(openvino, openvino_bert.compile_options("f32", 1))
    assert folder is not None
    compiled: list[object] = []
    with open(folder / ".compiling.lock", "a") as other_run:
        fcntl.flock(other_run, fcntl.LOCK_EX)  # another process compiling into the folder
        compiling = threading.Thread(target=lambda: compiled.append(openvino_bert.compile_on_cpu(xml, "f32", 1)))
        compiling.start()
        compiling.join(timeout=1.0)
        assert compiling.is_alive() and not compiled  # waits for it
    compiling.join(timeout=60)
    assert len(compiled) == 1
    assert [path for path in folder.iterdir() if path.suffix == ".blob"]  # and wrote the cache once the folder was its own
