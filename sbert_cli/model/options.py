"""What the user asked of the model: which one, where and how precisely to run it, checked once."""

from __future__ import annotations

from dataclasses import dataclass

from sbert_cli.choices import BACKEND_CHOICES, DEFAULT_MODEL, PRECISIONS, SIMILARITIES
from sbert_cli.errors import UsageError


@dataclass(frozen=True)
class ModelOptions:
    """Which model, where and how precisely to run it; the vectors' length and normalisation."""

    model: str = DEFAULT_MODEL
    device: str = "auto"
    precision: str = "auto"
    max_length: int | None = None
    normalize: bool = False
    prompt: str | None = None
    prompt_name: str | None = None
    truncate_dim: int | None = None
    similarity: str | None = None  # None: the model's own (cosine when it names none)
    backend: str = "auto"  # what runs the forward pass: backends.load_backend
    threads: int | None = None  # CPU threads for the forward pass (None: every core the process may use)
    few_texts: bool = False  # a handful of texts (sim): a backend readies the model for one batch's latency

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision {self.precision}: expected one of {', '.join(PRECISIONS)}")
        if self.backend not in BACKEND_CHOICES:
            raise UsageError(f"--backend {self.backend}: expected one of {', '.join(BACKEND_CHOICES)}")
        if self.prompt is not None and self.prompt_name is not None:
            raise UsageError(f"--prompt and --prompt-name {self.prompt_name} both given; pass the prompt's text or its name, not both")
        if self.truncate_dim is not None and self.truncate_dim < 1:
            raise UsageError(f"--truncate-dim {self.truncate_dim}: pass a number of dimensions of at least 1")
        if self.similarity is not None and self.similarity not in SIMILARITIES:
            raise UsageError(f"--similarity {self.similarity}: expected one of {', '.join(SIMILARITIES)}")
