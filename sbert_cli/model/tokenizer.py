"""Texts to token ids as sentence-transformers makes them: the prompt put before each text, the model's own tokenizer,
truncated by sbert in one pass."""

from __future__ import annotations

from typing import Any

import numpy as np

from sbert_cli.errors import ModelError, first_line
from sbert_cli.model.description import ModelDescription
from sbert_cli.model.saved_tokenizer import TokenizerFacts, load_saved_tokenizer, save_tokenizer
from sbert_cli.model.tokens import Tokenized, offsets_of

_TOKENIZE_SLICE = 4096  # texts tokenized per call


def load_tokenizer(source: Any) -> Any:
    """The directory's transformers tokenizer, never with remote code; a failure is one line naming the directory."""
    import transformers
    from transformers import AutoTokenizer

    # Load notes (an unused pooler) and weight-loading bars are not the user's business.
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        return AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for a bad directory
        raise ModelError(f"cannot load model from {source}: {first_line(exc)}") from None


def tokenizer_facts(tokenizer: Any) -> TokenizerFacts:
    """What sbert reads from a transformers tokenizer: its pad id and special ids, the side it truncates, and how many
    special tokens it puts around a text."""
    prefix, suffix = _special_token_split(tokenizer)
    return TokenizerFacts(
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        special_ids=tuple(int(token) for token in getattr(tokenizer, "all_special_ids", ())),
        left_truncation=getattr(tokenizer, "truncation_side", "right") == "left",
        prefix=prefix,
        suffix=suffix,
    )


def _special_token_split(tokenizer: Any) -> tuple[int, int] | tuple[None, None]:
    """How many special tokens the tokenizer puts before and after a single text ([CLS] x [SEP]: 1, 1)."""
    probe = "a b c 1 2 3"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return start, len(full) - start - len(plain)
    return None, None


class Tokenizer:
    """A model's tokenizer, putting the prompt before each text, lower-casing where the model says so and truncating
    to the model's length.

    The Rust tokenizer that transformers builds is saved beside the model (model.saved_tokenizer) on first use, and
    later runs load it alone: the same tokenizer, without importing transformers (0.6 s of each run's start-up).
    """

    def __init__(self, model: ModelDescription, tokenizer: Any = None) -> None:
        self.max_length = model.info.max_length
        self.lower_case = model.layout.do_lower_case
        self.prompt = model.info.prompt
        self._source = model.layout.transformer_dir
        self._transformers = tokenizer
        saved = load_saved_tokenizer(model) if tokenizer is None else None
        if saved is not None:
            self.backend, self.facts = saved
        else:
            self.backend = getattr(self.tokenizer, "backend_tokenizer", None)
            self.facts = tokenizer_facts(self.tokenizer)
            if tokenizer is None and self.backend is not None and self.facts.prefix is not None:
                save_tokenizer(model, self.backend, self.facts)
        self.pad_id = self.facts.pad_id

    @property
    def tokenizer(self) -> Any:
        """The model's transformers tokenizer, loaded when first asked for where the saved one serves the run."""
        if self._transformers is None:
            self._transformers = load_tokenizer(self._source)
        return self._transformers

    @property
    def prompt_length(self) -> int:
        """How many leading tokens are the prompt's, as sentence-transformers counts them for include_prompt=False:
        the prompt tokenized alone, less a special token at its end ([SEP], EOS)."""
        if not self.prompt:
            return 0
        ids = self._tokenize_slice([self.prompt.lower() if self.lower_case else self.prompt]).ids[0]
        return len(ids) - 1 if ids and ids[-1] in self.facts.special_ids else len(ids)

    def __call__(self, texts: list[str]) -> Tokenized:
        if self.prompt:
            texts = [self.prompt + text for text in texts]  # before lower-casing: the model lower-cases both
        if self.lower_case:
            texts = [text.lower() for text in texts]
        if not texts:
            return Tokenized(np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.int64))
        # A slice at a time: the tokenizer's per-text objects (tokens, offsets) for a whole window would
        # cost more memory than everything else the window holds.
        return Tokenized.concat([self._tokenize_slice(texts[start : start + _TOKENIZE_SLICE]) for start in range(0, len(texts), _TOKENIZE_SLICE)])

    def _tokenize_slice(self, texts: list[str]) -> Tokenized:
        limit = self.max_length
        if self.facts.prefix is None:
            # Unusual special-token layout: let the tokenizer truncate itself.
            counts = [len(ids) for ids in self._encode(texts)]
            truncated = self.tokenizer(texts, truncation=True, max_length=limit, return_attention_mask=False)["input_ids"]
            return Tokenized.from_lists(truncated, counts)
        full = Tokenized.from_lists(self._encode(texts))
        counts = full.n_tokens
        if int(counts.max()) <= limit:
            return full
        # Truncate every long text at once: keep its special tokens and the first (or, for a tokenizer that
        # truncates on the left, the last) tokens of its body, as sentence-transformers does.
        prefix, suffix = self.facts.prefix, self.facts.suffix or 0
        body = limit - prefix - suffix
        position = np.arange(len(full.flat)) - np.repeat(full.offsets[:-1], counts)
        length = np.repeat(counts, counts)
        if self.facts.left_truncation:
            keep = (position < prefix) | (position >= length - suffix - body)
        else:
            keep = (position < prefix + body) | (position >= length - suffix)
        return Tokenized(full.flat[keep], offsets_of(np.minimum(counts, limit)), counts)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Untruncated ids with special tokens, from the Rust tokenizer directly where there is one (a third faster
        than through transformers' wrapper, which builds a dict per text)."""
        backend = self.backend
        if backend is None:
            return self.tokenizer(texts, truncation=False, return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        if backend.truncation is not None or backend.padding is not None:
            backend.no_truncation()  # a tokenizer.json may carry its own settings; sbert truncates itself
            backend.no_padding()
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: no character offsets
        return [encoding.ids for encoding in encode(texts)]
