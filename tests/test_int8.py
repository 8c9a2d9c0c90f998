"""--precision int8: quantized once and kept beside the model, held to its quality gate, labelled in the output."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sbert_cli.backends import openvino_bert, openvino_int8
from sbert_cli.embedding import embed_texts
from sbert_cli.encoder import load_encoder
from sbert_cli.errors import UsageError
from sbert_cli.similarity import cosine_rows
from tests.conftest import sample_texts
from tests.test_cli import error_of, read_output, run

pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install -e '.[int8]'")
pytest.importorskip("nncf", reason="the int8 extra is not installed: pip install -e '.[int8]'")

INT8 = "sbert-openvino-int8"


@pytest.fixture
def model_copy(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """The tiny BERT in a folder of this test's own, so that its conversions are this test's alone."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model", ignore=shutil.ignore_patterns("sbert-openvino*")))


def jsonl(texts: list[str]) -> bytes:
    return "".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts).encode()


def quantizations(model_dir: Path) -> list[Path]:
    folder = model_dir / INT8
    return sorted(path for path in folder.iterdir() if not path.name.startswith(".")) if folder.exists() else []


def scrambled_embeddings(graph: object) -> object:
    """Damage a quantized model: half of the word embeddings' dimensions come out negated."""
    import openvino

    lookup = next(op for op in graph.get_ordered_ops() if op.get_type_name() == "Gather")
    width = lookup.get_output_partial_shape(0)[-1].get_length()
    targets = list(lookup.output(0).get_target_inputs())
    signs = openvino.opset13.constant(np.where(np.arange(width) % 2 == 0, 1.0, -1.0).astype(np.float32))
    flipped = openvino.opset13.multiply(lookup.output(0), signs)
    for target in targets:
        target.replace_source_output(flipped.output(0))
    graph.validate_nodes_and_infer_types()
    return graph


def test_int8_is_quantized_once_shown_as_a_one_time_step_and_labelled_with_its_gate(tmp_path: Path, model_copy: Path) -> None:
    texts = sample_texts()
    out = tmp_path / "out.parquet"
    result = run("encode", "-", "-o", out, "--model", model_copy, "--precision", "int8", input=jsonl(texts))
    assert result.exit_code == 0, result.output
    [folder] = quantizations(model_copy)
    assert f"sbert: quantizing the model to int8 (calibrated on sample texts, then checked against fp32): a one-time step for this model, kept in {folder} for later runs" in result.stderr
    assert sorted(path.name for path in folder.iterdir()) == ["gate.json", "model.bin", "model.xml", "options.json"]
    metadata = {key.decode(): value.decode() for key, value in pq.read_schema(out).metadata.items() if key.startswith(b"sbert.")}
    gate = json.loads((folder / "gate.json").read_text(encoding="utf-8"))
    assert metadata["sbert.precision"] == "int8" and metadata["sbert.dtype"] == "float32"
    assert metadata["sbert.int8_min_cosine"] == f"{gate['min_cosine']:.4f}" and float(metadata["sbert.int8_min_cosine"]) >= 0.98
    assert metadata["sbert.int8_ranking_spearman"] == f"{gate['ranking']:.4f}" and float(metadata["sbert.int8_ranking_spearman"]) >= 0.99
    assert metadata["sbert.int8_gate_texts"] == str(gate["texts"])
    assert metadata["sbert.int8_kept_in_higher_precision"] == gate["scheme"] == "none"  # the fastest scheme passed
    options = json.loads((folder / "options.json").read_text(encoding="utf-8"))
    assert options["int8"]["model_type"] == "transformer" and options["weights"]["file"] == "model.safetensors"
    summary = result.stderr.strip().splitlines()[-1]
    assert f"int8 (min cosine {metadata['sbert.int8_min_cosine']} to fp32, ranking {metadata['sbert.int8_ranking_spearman']}) on cpu" in summary

    again = tmp_path / "again.parquet"
    second = run("encode", "-", "-o", again, "--model", model_copy, "--precision", "int8", input=jsonl(texts))
    assert second.exit_code == 0, second.output
    assert "one-time step" not in second.stderr and quantizations(model_copy) == [folder]
    _, first_vectors = read_output(out, "")
    _, second_vectors = read_output(again, "")
    np.testing.assert_array_equal(second_vectors, first_vectors)
    fp32 = embed_texts(texts, load_encoder(str(model_copy), device="cpu", precision="fp32", backend="torch"))
    assert cosine_rows(first_vectors, fp32).min() >= 0.98


def test_the_gate_refuses_a_damaged_quantization_and_later_runs_refuse_at_once(tmp_path: Path, model_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, tried = openvino_int8.quantize_ir, []

    def damaged(fp32: object, feeds: list, kept: list[str]) -> object:
        tried.append(kept)
        return scrambled_embeddings(real(fp32, feeds, kept))

    monkeypatch.setattr(openvino_int8, "quantize_ir", damaged)
    out = tmp_path / "out.parquet"
    result = run("encode", "-", "-o", out, "--model", model_copy, "--precision", "int8", input=jsonl(sample_texts()))
    assert result.exit_code == 1
    assert re.fullmatch(
        rf"sbert: error: --precision int8: {re.escape(str(model_copy))} quantized to int8 fails the quality gate: "
        r"a text's cosine to fp32 fell to -?0\.\d{4} \(at least 0\.98 needed\)( and the ranking moved \(Spearman -?[01]\.\d{4} to fp32, at least 0\.99 needed\))?"
        r"; pass --precision bf16 or fp32",
        error_of(result),
    ), error_of(result)
    assert not out.exists()
    [folder] = quantizations(model_copy)  # the figures are kept, the failing model is not
    assert sorted(path.name for path in folder.iterdir()) == ["gate.json", "options.json"]
    # every scheme was tried, from all products quantized to every feed-forward output kept (the tiny BERT has 2 layers)
    assert [len(kept) for kept in tried] == [0, 1, 2]
    assert json.loads((folder / "gate.json").read_text(encoding="utf-8"))["scheme"] == "feed-forward outputs"

    def not_again(*args: object) -> None:
        raise AssertionError("quantized again")

    monkeypatch.setattr(openvino_int8, "quantize_ir", not_again)
    again = run("encode", "-", "-o", out, "--model", model_copy, "--precision", "int8", input=jsonl(sample_texts()))
    assert again.exit_code == 1 and error_of(again) == error_of(result)


def test_int8_without_openvino_or_off_its_backend_is_one_line(tmp_path: Path, model_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.parquet"
    torch_backend = run("encode", "-", "-o", out, "--model", model_copy, "--precision", "int8", "--backend", "torch", input=jsonl(["你好"]))
    assert torch_backend.exit_code == 2
    assert error_of(torch_backend) == "sbert: error: --precision int8 runs on the OpenVINO backend only; pass --backend auto or openvino"
    monkeypatch.setattr(openvino_bert, "find_spec", lambda name: None)  # a machine without OpenVINO
    result = run("encode", "-", "-o", out, "--model", model_copy, "--precision", "int8", input=jsonl(["你好"]))
    assert result.exit_code == 2
    assert error_of(result) == (
        "sbert: error: --precision int8 needs the OpenVINO backend, which is not installed: pip install 'sbert-cli[int8]', or pass --precision bf16"
    )
    assert not out.exists() and quantizations(model_copy) == []


def test_int8_without_nncf_is_one_line(model_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openvino_int8, "find_spec", lambda name: None if name == "nncf" else object())
    with pytest.raises(UsageError) as error:
        load_encoder(str(model_copy), device="cpu", precision="int8")
    assert str(error.value) == "--precision int8 quantizes the model once with NNCF, which is not installed: pip install 'sbert-cli[int8]', or pass --precision bf16"


def test_the_feed_forward_outputs_are_kept_in_higher_precision(model_copy: Path) -> None:
    import openvino

    from sbert_cli.backends.openvino_export import converted_model
    from sbert_cli.model.description import describe_model
    from sbert_cli.model.options import ModelOptions

    model = describe_model(ModelOptions(str(model_copy), "cpu", "fp32"))
    graph = openvino.Core().read_model(converted_model(model))
    kept = openvino_int8.feed_forward_outputs(graph, model.config)
    assert len(kept) == model.config["num_hidden_layers"]
    assert all(op.get_type_name() == "MatMul" for op in graph.get_ordered_ops() if op.get_friendly_name() in kept)


def test_the_fused_attention_takes_no_quantized_input(tmp_path: Path, model_copy: Path) -> None:
    """NNCF's transformer scheme would quantize the query and key going into OpenVINO's fused attention (with
    all-MiniLM-L6-v2 a text fell to cosine 0.56 from fp32 by that alone): the int8 model kept has no fake-quantize op
    between a product and the attention."""
    import openvino

    assert run("encode", "-", "-o", tmp_path / "out.npy", "--model", model_copy, "--precision", "int8", "-q", input=jsonl(["好"])).exit_code == 0
    [folder] = quantizations(model_copy)
    graph = openvino.Core().read_model(folder / "model.xml")
    attention = [op for op in graph.get_ordered_ops() if op.get_type_name() == "ScaledDotProductAttention"]
    assert len(attention) == 2  # the tiny BERT's two layers
    assert any(op.get_type_name() == "FakeQuantize" for op in graph.get_ordered_ops())  # the linear products are int8

    def fed_by_fake_quantize(node: object, depth: int = 0) -> bool:
        sources = [value.get_node() for value in node.input_values()]
        return any(
            source.get_type_name() == "FakeQuantize" or (depth < 4 and source.get_type_name() in ("Reshape", "Transpose") and fed_by_fake_quantize(source, depth + 1))
            for source in sources
        )

    assert not any(fed_by_fake_quantize(op) for op in attention)


def test_spearman() -> None:
    a = np.array([0.1, 0.5, 0.3, 0.9])
    assert openvino_int8.spearman(a, a * 2 + 1) == pytest.approx(1.0)
    assert openvino_int8.spearman(a, -a) == pytest.approx(-1.0)


def test_the_fastest_scheme_is_kept_only_with_a_margin(model_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheme that scrapes past the gate (0.985) gives way to the next that clears 0.99; the figures are the kept one's."""
    measured = iter([0.985, 0.995, 0.999])

    def gate(*args: object) -> openvino_int8.Gate:
        return openvino_int8.Gate(next(measured), 0.999, 32)

    monkeypatch.setattr(openvino_int8, "check_gate", gate)
    encoder = load_encoder(str(model_copy), device="cpu", precision="int8")
    assert dict(encoder.info.quality) == {
        "int8_min_cosine": "0.9950", "int8_ranking_spearman": "0.9990", "int8_gate_texts": "32",
        "int8_kept_in_higher_precision": "feed-forward outputs, first half of the layers",
    }
    assert next(measured) == 0.999  # the third scheme was never needed
