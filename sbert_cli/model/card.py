"""What a model's config_sentence_transformers.json asks of its users: its prompts, the one used by default, and the
similarity function its scores are meant in; resolved against --prompt, --prompt-name and --similarity as
sentence-transformers resolves them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sbert_cli.errors import ModelError, UsageError
from sbert_cli.choices import SIMILARITIES
from sbert_cli.model.modules import read_json

_SIMILARITY_ALIASES = {"dot_product": "dot"}
# sentence-transformers gives every SentenceTransformer these two names, empty unless the model's file fills them.
_DEFAULT_PROMPTS = {"query": "", "document": ""}


@dataclass(frozen=True)
class ModelCard:
    """config_sentence_transformers.json as far as sbert uses it."""

    prompts: dict[str, str] = field(default_factory=lambda: dict(_DEFAULT_PROMPTS))
    default_prompt_name: str | None = None
    similarity: str | None = None  # None: the file names none (cosine)


def read_card(model_dir: Path) -> ModelCard:
    """The model's prompts and similarity function; a model without the file has empty query/document prompts."""
    path = model_dir / "config_sentence_transformers.json"
    config = read_json(path) if path.exists() else {}
    prompts = dict(_DEFAULT_PROMPTS)
    prompts.update({str(name): str(text or "") for name, text in (config.get("prompts") or {}).items()})
    similarity = config.get("similarity_fn_name")
    if similarity is not None:
        similarity = _SIMILARITY_ALIASES.get(str(similarity), str(similarity))
        if similarity not in SIMILARITIES:
            raise ModelError(f"{path}: similarity_fn_name '{similarity}' is not supported; pass --similarity with one of {', '.join(SIMILARITIES)}")
    default = config.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise ModelError(f"{path}: default_prompt_name '{default}' is not among its prompts ({', '.join(prompts)}); pass --prompt or --prompt-name")
    return ModelCard(prompts, default, similarity)


def resolve_prompt(card: ModelCard, prompt: str | None, prompt_name: str | None, model: str) -> str:
    """The text put before every input: --prompt, else the prompt --prompt-name names, else the model's default
    prompt, else none (''). An empty prompt is no prompt, as in sentence-transformers."""
    if prompt is not None:
        return prompt
    if prompt_name is not None:
        if prompt_name not in card.prompts:
            raise UsageError(f"--prompt-name {prompt_name}: model '{model}' defines the prompts {', '.join(card.prompts)}; pass one of them or --prompt TEXT")
        return card.prompts[prompt_name]
    if card.default_prompt_name is not None:
        return card.prompts[card.default_prompt_name]
    return ""
