"""Every model the way its card says, against sentence-transformers from the same directories: prompts (given, named,
the model's default, left out of the pooling), Dense heads, every pooling mode, decoders with last-token pooling,
XLM-RoBERTa, and the model's similarity function."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sbert_cli.embedding import embed_texts
from sbert_cli.encoder import load_encoder
from sbert_cli.errors import ModelError, UsageError
from sbert_cli.plan import BatchPlan
from sbert_cli.similarity import cosine_rows
from tests.conftest import SAMPLE_DATA, sample_texts
from tests.st_models import Form, build
from tests.test_cli import error_of, run

TEXTS = ["", "好", "query: hello", "今天天气很好，我们去公园散步吧。", "这是一个非常长的句子，" * 12, *sample_texts()[:12]]
PLAN = BatchPlan(batch_size=5, max_tokens=400)  # several batches, most of them padded


def st_vectors(model_dir: Path, texts: list[str] = TEXTS, **options) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu").encode(texts, batch_size=4, convert_to_numpy=True, **options)


def our_vectors(model_dir: Path, texts: list[str] = TEXTS, **options) -> np.ndarray:
    return embed_texts(texts, load_encoder(str(model_dir), device="cpu", precision="fp32", **options), PLAN)


def assert_parity(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    assert cosine_rows(ours, theirs).min() >= 0.99999
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-3)


@pytest.fixture(scope="module")
def prompted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT with prompts and a default one, Dense layers (safetensors) and Normalize."""
    form = Form(
        dense=((24, "Tanh", True), (16, "Identity", False)), normalize=True,
        prompts=(("query", "查询："), ("passage", "段落：")), default_prompt_name="query",
    )
    return build(tmp_path_factory.mktemp("prompted"), form)


def test_default_prompt_named_prompt_and_given_prompt_match_sentence_transformers(prompted_dir: Path) -> None:
    assert_parity(our_vectors(prompted_dir), st_vectors(prompted_dir))  # the default prompt, query
    assert_parity(our_vectors(prompted_dir, prompt_name="passage"), st_vectors(prompted_dir, prompt_name="passage"))
    assert_parity(our_vectors(prompted_dir, prompt="问题："), st_vectors(prompted_dir, prompt="问题："))
    without = our_vectors(prompted_dir, prompt="")  # an empty prompt is no prompt, even over the default
    assert_parity(without, st_vectors(prompted_dir, prompt=""))
    assert cosine_rows(without, our_vectors(prompted_dir)).min() < 0.999
    encoder = load_encoder(str(prompted_dir), device="cpu", precision="fp32")
    assert (encoder.info.prompt, encoder.info.dim, encoder.info.normalize) == ("查询：", 16, True)


def test_an_unknown_prompt_name_lists_the_models_prompts(prompted_dir: Path) -> None:
    with pytest.raises(UsageError) as error:
        load_encoder(str(prompted_dir), device="cpu", prompt_name="answer")
    assert str(error.value) == f"--prompt-name answer: model '{prompted_dir}' defines the prompts query, document, passage; pass one of them or --prompt TEXT"
    result = run("sim", "甲", "乙", "--model", prompted_dir, "--prompt", "x", "--prompt-name", "query")
    assert result.exit_code == 2
    assert error_of(result) == "sbert: error: --prompt and --prompt-name query both given; pass the prompt's text or its name, not both"


def test_prompt_on_minilm_matches_sentence_transformers(minilm_dir: Path) -> None:
    assert_parity(our_vectors(minilm_dir, prompt="query: "), st_vectors(minilm_dir, prompt="query: "))


def test_evaluate_with_a_prompt_reproduces_sentence_transformers_spearman(minilm_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    from sbert_cli.evaluate import read_pairs

    pairs = read_pairs(str(SAMPLE_DATA / "pairs.tsv"))
    result = run("evaluate", SAMPLE_DATA / "pairs.tsv", "--model", minilm_dir, "--precision", "fp32", "--prompt", "问题：", "--json", "-q")
    ours = json.loads(result.stdout)
    model = SentenceTransformer(str(minilm_dir), device="cpu")
    model.prompts["evaluate"], model.default_prompt_name = "问题：", "evaluate"  # what --prompt does, for the evaluator
    theirs = EmbeddingSimilarityEvaluator(pairs.first, pairs.second, pairs.labels.tolist(), write_csv=False)(model)
    assert ours["similarity"] == "cosine" and ours["dtype"] == "float32"
    assert abs(ours["results"][0]["spearman"] - 100 * theirs[next(k for k in theirs if k.endswith("spearman_cosine"))]) <= 0.01


@pytest.mark.parametrize("mode", ["mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"])
def test_every_pooling_without_the_prompt_matches_sentence_transformers(mode: str, tmp_path: Path) -> None:
    model_dir = build(tmp_path, Form(pooling=mode, include_prompt=False, prompts=(("query", "查询："),), default_prompt_name="query"))
    encoder = load_encoder(str(model_dir), device="cpu", precision="fp32")
    assert encoder.target.pooling.skip == 4  # [CLS] 查 询 ：  ([SEP] is not the prompt's)
    assert_parity(embed_texts(TEXTS, encoder, PLAN), st_vectors(model_dir))


@pytest.mark.parametrize("mode", ["weightedmean", "lasttoken"])
def test_weightedmean_and_lasttoken_with_the_prompt_match_sentence_transformers(mode: str, tmp_path: Path) -> None:
    model_dir = build(tmp_path, Form(pooling=mode, dense=((8, "ReLU", True),), dense_bin=True))
    assert (model_dir / "2_Dense" / "pytorch_model.bin").exists()
    assert_parity(our_vectors(model_dir, prompt="段落："), st_vectors(model_dir, prompt="段落："))


def test_the_cuda_feeder_pools_and_runs_the_head_like_the_plain_path(prompted_dir: Path, tmp_path: Path) -> None:
    import torch

    from sbert_cli.backends.cuda import device_bert
    from sbert_cli.backends.feeding import DeviceFeeder
    from sbert_cli.backends.weights import read_weights

    model_dir = build(tmp_path, Form(pooling="lasttoken", include_prompt=False, dense=((8, "GELU", True),), prompts=(("q", "查询："),), default_prompt_name="q"))
    encoder = load_encoder(str(model_dir), device="cpu", precision="fp32", truncate_dim=6, normalize=True)
    tokens = encoder.tokenize(TEXTS)
    batches = PLAN.for_device("cpu").cut(tokens.lengths)
    plain = np.zeros((len(TEXTS), 6), dtype=np.float32)
    encoder.embed_batches(tokens, batches, plain, lambda rows: None)
    forward = device_bert(read_weights(encoder.model.layout.transformer_dir), encoder.model.config, torch.float32, torch.device("cpu"))
    fed = np.zeros_like(plain)
    assert DeviceFeeder(forward, encoder.target).run(tokens, batches, fed, lambda rows: None) == len(batches)
    np.testing.assert_allclose(fed, plain, atol=2e-5)
    assert_parity(plain, st_vectors(model_dir, truncate_dim=6, normalize_embeddings=True))


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("mode", ["lasttoken", "weightedmean"])
def test_a_qwen2_decoder_runs_through_transformers_like_sentence_transformers(mode: str, padding_side: str, tmp_path: Path) -> None:
    model_dir = build(tmp_path, Form(arch="qwen2", pooling=mode, padding_side=padding_side, normalize=True))
    encoder = load_encoder(str(model_dir), device="cpu", precision="fp32")
    assert encoder.backend.name == "transformers"
    assert_parity(embed_texts(TEXTS, encoder, PLAN), st_vectors(model_dir))


def test_xlm_roberta_with_dense_matches_sentence_transformers(tmp_path: Path) -> None:
    model_dir = build(tmp_path, Form(arch="xlmr", dense=((16, "Tanh", True),), prompts=(("query", "query: "),)))
    assert_parity(our_vectors(model_dir, prompt_name="query"), st_vectors(model_dir, prompt_name="query"))


def test_a_model_that_needs_its_own_code_is_refused_in_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    import shutil

    model_dir = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError) as error:
        load_encoder(str(model_dir), device="cpu")
    assert str(error.value) == (
        f"{model_dir / 'config.json'}: this model runs its own code (auto_map), and sbert never runs a model's code "
        "(trust_remote_code stays off); use a model that transformers runs as it is"
    )


def test_a_tokenizer_that_needs_its_own_code_is_refused_in_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    import shutil

    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "remote-tokenizer"))
    settings_file = model_dir / "tokenizer_config.json"
    settings = json.loads(settings_file.read_text())
    settings["auto_map"] = {"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]}
    settings_file.write_text(json.dumps(settings))
    out = tmp_path / "out.parquet"
    result = run("encode", SAMPLE_DATA / "sentences.jsonl", "-o", out, "--model", model_dir)
    assert result.exit_code == 1
    assert error_of(result) == (
        f"sbert: error: {settings_file}: this model runs its own code (auto_map), and sbert never runs a model's code "
        "(trust_remote_code stays off); use a model that transformers runs as it is"
    )
    assert [line for line in result.stderr.splitlines() if line.strip()] == [error_of(result)]
    assert not out.exists()


def test_an_unsupported_dense_activation_is_named(tmp_path: Path) -> None:
    model_dir = build(tmp_path, Form(dense=((8, "Tanh", True),)))
    config_file = model_dir / "2_Dense" / "config.json"
    config = json.loads(config_file.read_text())
    config["activation_function"] = "torch.nn.modules.activation.Softplus"
    config_file.write_text(json.dumps(config))
    with pytest.raises(ModelError) as error:
        load_encoder(str(model_dir), device="cpu")
    assert str(error.value) == (
        f"{config_file}: activation 'torch.nn.modules.activation.Softplus' is not supported; sbert runs Dense with one of "
        "Tanh, Identity, ReLU, GELU, Sigmoid, SiLU"
    )


@pytest.fixture(scope="module")
def similarity_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("similarity")
    return {name: build(base / name, Form(similarity=name, dense=((12, "Tanh", True),))) for name in ("cosine", "dot", "euclidean", "manhattan")}


@pytest.mark.parametrize("name", ["cosine", "dot", "euclidean", "manhattan"])
def test_sim_uses_the_models_similarity_function(name: str, similarity_dirs: dict[str, Path]) -> None:
    from sentence_transformers import SentenceTransformer

    model_dir = similarity_dirs[name]
    sentences = ["今天天气很好", "今天是晴天", "我想退款"]
    model = SentenceTransformer(str(model_dir), device="cpu")
    vectors = model.encode(sentences, convert_to_tensor=True)
    expected = model.similarity_pairwise(vectors[:1].repeat(2, 1), vectors[1:]).tolist()
    result = run("sim", *sentences, "--model", model_dir, "--precision", "fp32", "--json")
    data = json.loads(result.stdout)
    assert data["similarity"] == name
    assert [item[name] for item in data["similarities"]] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    plain = run("sim", *sentences, "--model", model_dir, "--precision", "fp32")
    assert plain.stdout.splitlines() == [f"{score:.4f}" for score in [item[name] for item in data["similarities"]]]
    notes = {"cosine": "", "dot": "sbert: dot similarity\n"}
    assert plain.stderr == notes.get(name, f"sbert: {name} similarity (negative distance)\n")


@pytest.mark.parametrize("name", ["cosine", "dot", "euclidean", "manhattan"])
def test_evaluate_correlates_the_chosen_similarity_like_sentence_transformers(name: str, similarity_dirs: dict[str, Path]) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    from sbert_cli.evaluate import read_pairs

    pairs = read_pairs(str(SAMPLE_DATA / "pairs.tsv"))
    model_dir = similarity_dirs["cosine"]  # the model says cosine; --similarity overrides it
    result = run("evaluate", SAMPLE_DATA / "pairs.tsv", "--model", model_dir, "--precision", "fp32", "--similarity", name, "--json", "-q")
    ours = json.loads(result.stdout)
    evaluator = EmbeddingSimilarityEvaluator(pairs.first, pairs.second, pairs.labels.tolist(), similarity_fn_names=[name], write_csv=False)
    theirs = evaluator(SentenceTransformer(str(model_dir), device="cpu"))
    assert ours["similarity"] == name
    assert ours["results"][0]["spearman"] == pytest.approx(100 * theirs[next(k for k in theirs if k.endswith(f"spearman_{name}"))], abs=0.01)
    table = run("evaluate", SAMPLE_DATA / "pairs.tsv", "--model", model_dir, "--similarity", name, "-q").stdout
    note = f"{name} similarity against the labels, x100"
    assert (note in table) == (name != "cosine")  # the cosine of float32 vectors is the default, and not noted
