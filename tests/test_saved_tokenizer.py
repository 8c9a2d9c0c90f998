"""The Rust tokenizer saved beside a model: later runs tokenize exactly as transformers' tokenizer does, without
importing transformers; a changed tokenizer file, a damaged folder or a read-only model are handled."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sbert_cli.cache import CacheFile, Profiles
from sbert_cli.job import ModelOptions
from sbert_cli.model.derived import SAVED_TOKENIZERS
from sbert_cli.model.description import ModelDescription, describe_model
from sbert_cli.model.saved_tokenizer import load_saved_tokenizer
from sbert_cli.model.tokenizer import Tokenizer, load_tokenizer
from tests.conftest import ROOT, sample_texts
from tests.st_models import Form, build

# Short and long (truncated) texts, mixed scripts, accents, emoji, spaces and an empty one.
TEXTS = sample_texts()[:40] + ["", "  ", "Ünïcödé ÀÉÎ naïve café", "emoji 😀 ok", "中文" * 400, "long english text " * 100]


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache_home = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    return cache_home


def copy_of(model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(model_dir, target, ignore=shutil.ignore_patterns(SAVED_TOKENIZERS))
    return target


def described(model_dir: Path, prompt: str | None = None) -> ModelDescription:
    return describe_model(ModelOptions(str(model_dir), "cpu", "fp32", prompt=prompt))


def assert_same_tokens(first: Tokenizer, second: Tokenizer) -> None:
    ours, theirs = first(TEXTS), second(TEXTS)
    assert np.array_equal(ours.flat, theirs.flat) and np.array_equal(ours.offsets, theirs.offsets)
    assert np.array_equal(ours.n_tokens, theirs.n_tokens)
    assert (first.pad_id, first.prompt_length, first.facts) == (second.pad_id, second.prompt_length, second.facts)


@pytest.mark.parametrize("prompt", [None, "查询: "])
def test_saved_tokenizer_tokenizes_as_transformers_on_minilm(minilm_dir: Path, tmp_path: Path, own_cache: Path, prompt: str | None) -> None:
    model = described(copy_of(minilm_dir, tmp_path), prompt)
    built = Tokenizer(model)  # transformers builds it, and it is saved
    saved = Tokenizer(model)
    assert built._transformers is not None and saved._transformers is None
    assert_same_tokens(built, saved)
    assert any((model.layout.transformer_dir / SAVED_TOKENIZERS).glob("*/facts.json"))


def test_saved_tokenizer_tokenizes_as_transformers_on_the_chinese_vocab(chinese_model_dir: Path, tmp_path: Path, own_cache: Path) -> None:
    model = described(copy_of(chinese_model_dir, tmp_path))
    built, saved = Tokenizer(model), Tokenizer(model)
    assert saved._transformers is None
    assert_same_tokens(built, saved)
    assert_same_tokens(Tokenizer(model, load_tokenizer(model.layout.transformer_dir)), saved)


@pytest.mark.parametrize("form", [Form(arch="xlmr"), Form(arch="qwen2", pooling="lasttoken", padding_side="left")], ids=["xlmr", "qwen2"])
def test_saved_tokenizer_matches_for_other_tokenizer_kinds(form: Form, tmp_path: Path, own_cache: Path) -> None:
    model = described(build(tmp_path / "built", form))
    built, saved = Tokenizer(model), Tokenizer(model)
    assert saved._transformers is None
    assert_same_tokens(built, saved)


def test_a_run_with_the_saved_tokenizer_does_not_import_transformers(tiny_model_dir: Path, tmp_path: Path, own_cache: Path) -> None:
    model_dir = copy_of(tiny_model_dir, tmp_path)
    Tokenizer(described(model_dir))
    script = (
        "import sys\n"
        "from sbert_cli.encoder import load_encoder\n"
        f"encoder = load_encoder({str(model_dir)!r}, device='cpu', precision='fp32')\n"
        "encoder.tokenize(['hello world'])\n"
        "print('transformers' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_a_changed_tokenizer_file_is_not_served_by_the_saved_one(tiny_model_dir: Path, tmp_path: Path, own_cache: Path) -> None:
    model_dir = copy_of(tiny_model_dir, tmp_path)
    Tokenizer(described(model_dir))
    assert load_saved_tokenizer(described(model_dir)) is not None
    vocab = model_dir / "vocab.txt"
    vocab.write_text(vocab.read_text(encoding="utf-8") + "extra\n", encoding="utf-8")
    assert load_saved_tokenizer(described(model_dir)) is None
    assert Tokenizer(described(model_dir)).tokenizer.vocab_size == Tokenizer(described(model_dir)).backend.get_vocab_size()


def test_a_damaged_saved_tokenizer_is_built_again(tiny_model_dir: Path, tmp_path: Path, own_cache: Path) -> None:
    model_dir = copy_of(tiny_model_dir, tmp_path)
    first = Tokenizer(described(model_dir))
    for facts in (model_dir / SAVED_TOKENIZERS).glob("*/facts.json"):
        facts.write_text("{not json", encoding="utf-8")
    again = Tokenizer(described(model_dir))
    assert again._transformers is not None
    assert_same_tokens(first, again)


def test_a_model_folder_that_cannot_hold_it_keeps_its_saved_tokenizer_in_the_user_cache(tiny_model_dir: Path, tmp_path: Path, own_cache: Path) -> None:
    model_dir = copy_of(tiny_model_dir, tmp_path)
    (model_dir / SAVED_TOKENIZERS).write_text("in the way\n")  # the folder cannot be made there (as in a read-only model)
    Tokenizer(described(model_dir))
    assert any((own_cache / "sbert" / "tokenizers").glob("*/facts.json"))
    assert Tokenizer(described(model_dir))._transformers is None


def test_the_saved_tokenizer_does_not_change_the_models_cache_fingerprint(tiny_model_dir: Path, tmp_path: Path, own_cache: Path) -> None:
    model_dir = copy_of(tiny_model_dir, tmp_path)
    profiles = Profiles(CacheFile(str(tmp_path / "cache.sqlite")))
    before = profiles.profile("tiny", model_dir, {})
    Tokenizer(described(model_dir))
    assert any((model_dir / SAVED_TOKENIZERS).glob("*/tokenizer.json"))
    assert profiles.profile("tiny", model_dir, {}) == before
    assert json.loads(next((model_dir / SAVED_TOKENIZERS).glob("*/options.json")).read_text())["files"]["vocab.txt"]


def test_a_tokenizer_that_cannot_be_saved_still_tokenizes(tiny_model_dir: Path, tmp_path: Path, own_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tokenizers

    def refuse(self: object, path: str, pretty: bool = True) -> None:
        raise Exception("Custom PreTokenizer cannot be serialized")

    model_dir = copy_of(tiny_model_dir, tmp_path)
    reference = Tokenizer(described(model_dir), load_tokenizer(model_dir))
    monkeypatch.setattr(tokenizers.Tokenizer, "save", refuse)
    built = Tokenizer(described(model_dir))
    assert not any((model_dir / SAVED_TOKENIZERS).glob("*/facts.json")) and not any((own_cache / "sbert").glob("*/*/facts.json"))
    assert_same_tokens(reference, built)
