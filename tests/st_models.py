"""Small sentence-transformers models with random weights, built and saved by sentence-transformers itself: a BERT, an
XLM-RoBERTa and a Qwen2 decoder, with the pooling, Dense, Normalize, prompts and similarity a test asks for."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import SPECIAL_TOKENS, sample_texts

PROMPT_CHARACTERS = "查询段落：问题回答 query:passage"


def characters() -> list[str]:
    """Every character the tests' texts and prompts use, once, in a fixed order."""
    seen = {ch for text in sample_texts() for ch in text} | set(PROMPT_CHARACTERS) | set("abcdefghijklmnopqrstuvwxyz ")
    return sorted(seen)


@dataclass(frozen=True)
class Form:
    """What to build: the backbone, the pooling and the modules after it, and config_sentence_transformers.json."""

    arch: str = "bert"  # bert | xlmr | qwen2
    pooling: str = "mean"  # a sentence-transformers pooling_mode
    include_prompt: bool = True
    dense: tuple[tuple[int, str, bool], ...] = ()  # (out_features, activation class name, bias) per Dense
    normalize: bool = False
    prompts: tuple[tuple[str, str], ...] = ()
    default_prompt_name: str | None = None
    similarity: str | None = None
    padding_side: str = "right"
    dense_bin: bool = False  # the Dense weights in pytorch_model.bin rather than model.safetensors


def build(directory: Path, form: Form, seed: int = 0) -> Path:
    """Build the backbone in `directory`/backbone, wrap it in sentence-transformers modules and save the model."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    torch.manual_seed(seed)
    backbone = _backbone(directory / "backbone", form)
    transformer = Transformer(str(backbone), max_seq_length=64)
    hidden = transformer.get_embedding_dimension()
    modules: list = [transformer, Pooling(hidden, pooling_mode=form.pooling, include_prompt=form.include_prompt)]
    dim = hidden
    for out_features, activation, bias in form.dense:
        modules.append(Dense(dim, out_features, bias=bias, activation_function=getattr(torch.nn, activation)()))
        dim = out_features
    if form.normalize:
        modules.append(Normalize())
    model = SentenceTransformer(
        modules=modules, device="cpu", prompts=dict(form.prompts) or None, default_prompt_name=form.default_prompt_name,
        similarity_fn_name=form.similarity,
    )
    target = directory / "model"
    model.save(str(target), safe_serialization=not form.dense_bin)
    return target


def _backbone(directory: Path, form: Form) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if form.arch == "bert":
        return _bert(directory)
    from transformers import Qwen2Config, Qwen2Model, XLMRobertaConfig, XLMRobertaModel

    if form.arch == "xlmr":
        vocab = _char_tokenizer(directory, ["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>", pad="<pad>", padding_side=form.padding_side)
        config = XLMRobertaConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=130, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        )
        XLMRobertaModel(config, add_pooling_layer=False).eval().save_pretrained(directory)
    else:
        vocab = _byte_tokenizer(directory, padding_side=form.padding_side)
        config = Qwen2Config(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, pad_token_id=None, eos_token_id=0, bos_token_id=0,
        )
        Qwen2Model(config).eval().save_pretrained(directory)
    return directory


def _bert(directory: Path) -> Path:
    from transformers import BertConfig, BertModel

    vocab = SPECIAL_TOKENS + [ch for ch in characters() if not ch.isspace()]
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config, add_pooling_layer=False).eval().save_pretrained(directory)
    (directory / "vocab.txt").write_text("".join(token + "\n" for token in vocab), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "BertTokenizer", "do_lower_case": False, "tokenize_chinese_chars": True, "model_max_length": 512,
                "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
            }
        )
    )
    return directory


def _byte_tokenizer(directory: Path, padding_side: str) -> int:
    """Qwen2's kind of tokenizer: byte-level BPE (here with no merges: a token a UTF-8 byte), an end-of-text token
    after every text, which last-token pooling takes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: index for index, token in enumerate(["<|endoftext|>", *sorted(alphabet)])}
    tokenizer = Tokenizer(models.BPE(vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=128, padding_side=padding_side, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(directory)
    return len(vocab)


def _char_tokenizer(directory: Path, specials: list[str], template: str, *, pad: str, padding_side: str) -> int:
    """A character-level fast tokenizer with `template`'s special tokens; returns the vocabulary's size."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(specials + characters())}
    unk = next(token for token in specials if "unk" in token)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    used = [token for token in specials if token in template.split()]
    tokenizer.post_processor = processors.TemplateProcessing(single=template, special_tokens=[(token, vocab[token]) for token in used])
    named = {"unk_token": unk, "pad_token": pad, "bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>"}
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=128, padding_side=padding_side, **named)
    fast.save_pretrained(directory)
    return len(vocab)
