"""The encoder against sentence-transformers, the reference implementation, on real and Chinese-shaped models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sbert_cli.embedding import embed_texts
from sbert_cli.encoder import load_encoder
from sbert_cli.errors import ModelError, UsageError
from sbert_cli.evaluate import read_pairs, score_pair_sets
from sbert_cli.model.description import read_layout, resolve_model_dir
from sbert_cli.plan import BatchPlan
from sbert_cli.similarity import cosine_rows
from tests.conftest import SHARED_DATA, needs_shared, sample_texts

MIXED_TEXTS = [
    "",
    "好",
    "今天天气很好，我们去公园散步吧。",
    "The quick brown fox jumps over the lazy dog.",
    "机器学习 machine learning 是一个很有意思的方向。",
    "这是一个非常长的句子，" * 80,  # far beyond max_seq_length: truncation must match
    "word " * 600,
]


def reference_vectors(model_dir: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    return model.encode(texts, batch_size=8, convert_to_numpy=True)


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path):
    """The fp32 reference: torch's backend, which the other backends are held to."""
    return load_encoder(str(minilm_dir), device="cpu", precision="fp32", backend="torch")


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm, minilm_dir: Path) -> None:
    texts = MIXED_TEXTS + sample_texts()
    ours = embed_texts(texts, minilm, BatchPlan(batch_size=5, max_tokens=600))
    theirs = reference_vectors(minilm_dir, texts)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape == (len(texts), 384)
    assert cosine_rows(ours, theirs).min() >= 0.99999


@pytest.mark.slow
def test_minilm_layout_is_read(minilm) -> None:
    assert (minilm.info.pooling, minilm.info.normalize, minilm.info.max_length, minilm.info.dim) == ("mean", True, 256, 384)
    tokens = minilm.tokenize(["word " * 600])
    assert len(tokens.ids[0]) == 256 and tokens.n_tokens[0] == 602


@pytest.mark.slow
def test_padding_invariance(minilm) -> None:
    """A text encoded alone equals the same text batched with a much longer one."""
    short = "今天天气很好。"
    alone = minilm.embed(minilm.tokenize([short]).ids)
    together = minilm.embed(minilm.tokenize([short, "一个很长的段落。" * 30]).ids)[:1]
    assert cosine_rows(alone, together)[0] >= 0.99999
    np.testing.assert_allclose(alone, together, atol=1e-5)


@pytest.mark.slow
def test_chinese_vocab_gives_no_unknown_tokens(chinese_model_dir: Path) -> None:
    encoder = load_encoder(str(chinese_model_dir), device="cpu", precision="fp32")
    # Chinese text only: with do_lower_case false, as bert-base-chinese ships, "Python" is [UNK] there too.
    chinese = [text for text in sample_texts() if not any("a" <= ch.lower() <= "z" for ch in text)]
    assert len(chinese) > 30
    ids = encoder.tokenize(chinese).ids
    unk = encoder.tokenizer.unk_token_id
    assert encoder.tokenizer.vocab_size == 21128
    assert all(unk not in row for row in ids)
    assert encoder.tokenizer.convert_ids_to_tokens(encoder.tokenize(["你好"]).ids[0]) == ["[CLS]", "你", "好", "[SEP]"]


@pytest.mark.slow
def test_chinese_shaped_model_matches_sentence_transformers(chinese_model_dir: Path) -> None:
    encoder = load_encoder(str(chinese_model_dir), device="cpu", precision="fp32")
    assert (encoder.info.dim, encoder.info.pooling, encoder.info.normalize, encoder.info.max_length) == (768, "mean", False, 256)
    texts = sample_texts() + ["很长的段落。" * 60]
    ours = embed_texts(texts, encoder, BatchPlan(batch_size=8))
    theirs = reference_vectors(chinese_model_dir, texts)
    assert cosine_rows(ours, theirs).min() >= 0.99999


def test_plain_transformers_layout(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Without modules.json: mean pooling, no normalisation, the tokenizer's and position limit."""
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"):
        (plain / name).write_bytes((tiny_model_dir / name).read_bytes())
    layout = read_layout(plain)
    assert (layout.pooling, layout.normalize, layout.max_seq_length) == ("mean", False, None)
    encoder = load_encoder(str(plain), device="cpu", precision="fp32")
    assert encoder.info.max_length == 128  # max_position_embeddings caps the tokenizer's 512
    st_encoder = load_encoder(str(tiny_model_dir), device="cpu", precision="fp32")
    text = ["今天天气很好"]
    np.testing.assert_allclose(encoder.embed(encoder.tokenize(text).ids), st_encoder.embed(st_encoder.tokenize(text).ids), atol=1e-6)


@pytest.mark.parametrize("mode", ["cls", "max", "mean_sqrt_len"])
def test_other_pooling_modes_match_sentence_transformers(tmp_path: Path, tiny_model_dir: Path, mode: str) -> None:
    model_dir = tmp_path / mode
    import shutil

    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    config["pooling_mode_mean_tokens"] = False
    config[{"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens"}[mode]] = True
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps(config))
    encoder = load_encoder(str(model_dir), device="cpu", precision="fp32")
    assert encoder.info.pooling == mode
    texts = sample_texts()[:10]
    ours = embed_texts(texts, encoder, BatchPlan(batch_size=3))
    assert cosine_rows(ours, reference_vectors(model_dir, texts)).min() >= 0.99999


def test_normalize_option(tiny_model_dir: Path) -> None:
    encoder = load_encoder(str(tiny_model_dir), device="cpu", precision="fp32", normalize=True)
    vectors = embed_texts(sample_texts()[:5], encoder)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_max_length_override(tiny_model_dir: Path) -> None:
    encoder = load_encoder(str(tiny_model_dir), device="cpu", precision="fp32", max_length=8)
    tokens = encoder.tokenize(["一二三四五六七八九十"])
    assert tokens.ids[0][0] == encoder.tokenizer.cls_token_id and tokens.ids[0][-1] == encoder.tokenizer.sep_token_id
    assert (len(tokens.ids[0]), tokens.n_tokens[0]) == (8, 12)
    with pytest.raises(UsageError) as error:
        load_encoder(str(tiny_model_dir), device="cpu", max_length=1000)
    assert str(error.value) == "--max-length 1000: this model takes 2 to 128 tokens"


def test_unreachable_hub_model_fails_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelError) as error:
        resolve_model_dir("DMetaSoul/sbert-chinese-general-v1")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("cannot load model 'DMetaSoul/sbert-chinese-general-v1': not in the local Hugging Face cache")
    assert message.endswith(
        "download it where there is network (hf download DMetaSoul/sbert-chinese-general-v1 --local-dir DIR) "
        "and pass --model DIR, or set SBERT_MODEL=DIR"
    )


def test_missing_local_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as error:
        resolve_model_dir(str(tmp_path / "nope"))
    assert str(error.value) == f"model directory '{tmp_path / 'nope'}' does not exist; pass --model with an existing directory"


def test_directory_without_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as error:
        load_encoder(str(tmp_path), device="cpu", precision="fp32")
    assert str(error.value) == f"{tmp_path}: no config.json or modules.json; this is not a model directory"


def test_unavailable_cuda_is_a_usage_error(tiny_model_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UsageError) as error:
        load_encoder(str(tiny_model_dir), device="cuda")
    assert str(error.value) == "--device cuda: torch sees no CUDA device; pass --device cpu"


def test_unsupported_module_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    import shutil

    model_dir = tmp_path / "lstm"
    shutil.copytree(tiny_model_dir, model_dir)
    modules = json.loads((model_dir / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_LSTM", "type": "sentence_transformers.models.LSTM"})
    (model_dir / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelError) as error:
        load_encoder(str(model_dir), device="cpu", precision="fp32")
    assert str(error.value) == (
        f"{model_dir / 'modules.json'}: module 'sentence_transformers.models.LSTM' is not supported here "
        "(sbert runs Transformer, Pooling, then Dense and Normalize)"
    )


def bf16_encoder(model: str, backend: str):
    """The model at bf16 on one backend (torch's oneDNN, or OpenVINO where it is installed and bf16 is native)."""
    from importlib.util import find_spec

    from sbert_cli.model.device import cpu_has_native_bf16

    if backend == "openvino" and (find_spec("openvino") is None or not cpu_has_native_bf16()):
        pytest.skip("OpenVINO runs bf16 only where it is installed and the CPU has native bf16")
    return load_encoder(model, device="cpu", precision="bf16", backend=backend)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_bf16_stays_close_to_fp32_on_real_weights(minilm, backend: str) -> None:
    """bf16 (what --precision auto picks on a CPU with native bf16): cosine >= 0.9998 to fp32."""
    bf16 = bf16_encoder(str(minilm.info.name), backend)
    texts = MIXED_TEXTS[1:5] + sample_texts()[:12]
    low = embed_texts(texts, bf16)
    assert low.dtype == np.float32
    assert cosine_rows(low, embed_texts(texts, minilm)).min() >= 0.9998


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_bf16_accuracy_on_csts_dev(minilm, backend: str) -> None:
    """Every sentence of csts dev: bf16 vectors within cosine 0.9998 of fp32's, Spearman within 0.1 point."""
    pairs = read_pairs(str(SHARED_DATA / "csts" / "STS-B.valid.data"))
    bf16 = bf16_encoder(str(minilm.info.name), backend)
    texts = list(dict.fromkeys(pairs.first + pairs.second))
    assert cosine_rows(embed_texts(texts, bf16), embed_texts(texts, minilm)).min() >= 0.9998
    high, low = score_pair_sets([pairs], minilm)[0], score_pair_sets([pairs], bf16)[0]
    assert abs(high.spearman - low.spearman) <= 0.1


def test_auto_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    import sbert_cli.model.device as encoder_module

    assert encoder_module.pick_precision("auto", "cuda:0") == "fp16"
    monkeypatch.setattr(encoder_module, "cpu_has_native_bf16", lambda: True)
    assert encoder_module.pick_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(encoder_module, "cpu_has_native_bf16", lambda: False)
    assert encoder_module.pick_precision("auto", "cpu") == "fp32"
    assert encoder_module.pick_precision("fp32", "cuda") == "fp32"
    from sbert_cli.job import ModelOptions

    with pytest.raises(UsageError) as error:
        ModelOptions(precision="int4")
    assert str(error.value) == "--precision int4: expected one of auto, fp32, bf16, fp16, int8"


class _RunsCode:
    """A pickle payload: unpickling it runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def test_a_pickle_that_runs_code_is_refused_in_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    import shutil

    import torch

    from tests.test_cli import error_of, run

    model_dir = tmp_path / "tampered"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "payload-ran"
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(1), "x": _RunsCode(f"touch {marker}")}, model_dir / "pytorch_model.bin")
    result = run("sim", "甲", "乙", "--model", model_dir)
    assert result.exit_code == 1
    assert error_of(result) == (
        f"sbert: error: {model_dir}: pytorch_model.bin holds pickled code objects besides tensors, and sbert loads "
        "weights only; get model.safetensors from a source you trust"
    )
    assert not marker.exists()
