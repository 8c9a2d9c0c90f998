"""A model found and described without torch: its directory, its sentence-transformers layout and its config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbert_cli.errors import ModelError, UsageError, first_line
from sbert_cli.model.options import ModelOptions
from sbert_cli.model.card import read_card, resolve_prompt
from sbert_cli.model.device import pick_device, pick_precision
from sbert_cli.model.modules import HeadLayer, NormalizeLayer, PoolingConfig, ends_normalized, full_head, head_dim, read_dense, read_json, read_pooling

# Files a sentence-transformers or transformers checkpoint needs; skips ONNX/OpenVINO/TF copies.
MODEL_FILE_PATTERNS = ("*.json", "*.txt", "*.model", "*.safetensors", "pytorch_model*.bin")


@dataclass(frozen=True)
class ModelInfo:
    """What the vectors are: recorded in the output's metadata, the manifest and the cache's keys."""

    name: str
    dim: int
    pooling: str
    normalize: bool
    max_length: int
    precision: str
    device: str
    prompt: str = ""  # put before every text ('' for none)
    similarity: str = "cosine"  # what sim and evaluate compare vectors by
    truncate_dim: int | None = None
    quality: tuple[tuple[str, str], ...] = ()  # --precision int8: its quality gate's figures, known once it is loaded


@dataclass(frozen=True)
class ModelLayout:
    """What a model directory says about itself, read without torch."""

    transformer_dir: Path
    pooling: str
    max_seq_length: int | None
    do_lower_case: bool
    include_prompt: bool = True  # the pooling counts the prompt's tokens
    head: tuple[HeadLayer, ...] = ()  # the modules after pooling, in order (Dense, Normalize)

    @property
    def normalize(self) -> bool:
        """The model's own modules end in Normalize."""
        return ends_normalized(self.head)


@dataclass(frozen=True)
class ModelDescription:
    """A model found and described without torch: a run that needs no forward pass never loads it."""

    directory: Path
    layout: ModelLayout
    info: ModelInfo
    config: dict[str, Any]  # the transformer's config.json
    head: tuple[HeadLayer, ...] = ()  # after pooling: the model's modules, then --truncate-dim and --normalize
    backend: str = "auto"  # --backend: which backend runs it (backends.load_backend)
    threads: int | None = None  # CPU threads for its forward pass (None: every core the process may use)
    few_texts: bool = False  # ModelOptions.few_texts


def describe_model(options: ModelOptions) -> ModelDescription:
    """Find the model and decide its device, precision and length; every failure is a one-line SbertError."""
    directory = resolve_model_dir(options.model)
    layout = read_layout(directory)
    device = pick_device(options.device)
    config_file = layout.transformer_dir / "config.json"
    config = read_json(config_file) if config_file.exists() else {}
    _refuse_remote_code(layout.transformer_dir, config)
    hidden = config.get("hidden_size") or config.get("dim") or config.get("d_model") or config.get("n_embd")
    if not isinstance(hidden, int):
        raise ModelError(f"{config_file}: no hidden_size; sbert encodes with BERT-like transformers models")
    head = full_head(layout.head, options.truncate_dim, options.normalize)
    card = read_card(directory)
    info = ModelInfo(
        name=options.model,
        dim=head_dim(head, hidden, directory),
        pooling=layout.pooling,
        normalize=ends_normalized(head),
        max_length=_pick_max_length(layout, config, options.max_length),
        precision=pick_precision(options.precision, device),
        device=device,
        prompt=resolve_prompt(card, options.prompt, options.prompt_name, options.model),
        similarity=options.similarity or card.similarity or "cosine",
        truncate_dim=options.truncate_dim,
    )
    return ModelDescription(directory, layout, info, config, head, options.backend, options.threads, options.few_texts)


def _refuse_remote_code(transformer_dir: Path, config: dict[str, Any]) -> None:
    """A model whose classes live in its own repository (auto_map) needs trust_remote_code, which sbert never turns on."""
    tokenizer_file = transformer_dir / "tokenizer_config.json"
    for path, settings in ((transformer_dir / "config.json", config), (tokenizer_file, read_json(tokenizer_file) if tokenizer_file.exists() else {})):
        if isinstance(settings, dict) and settings.get("auto_map"):
            raise ModelError(
                f"{path}: this model runs its own code (auto_map), and sbert never runs a model's code (trust_remote_code stays off); "
                "use a model that transformers runs as it is"
            )


def resolve_model_dir(model: str) -> Path:
    """A local directory for `model`: the directory itself, or the hub id's cached (or downloaded) snapshot."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelError(f"model '{model}' is a file; pass the directory that holds config.json")
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or not model.strip():
        raise ModelError(f"model directory '{model}' does not exist; pass --model with an existing directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, allow_patterns=list(MODEL_FILE_PATTERNS)))
    except Exception as exc:  # the hub client raises many types for "not cached and not reachable"
        raise ModelError(
            f"cannot load model '{model}': not in the local Hugging Face cache and the hub cannot be reached "
            f"({type(exc).__name__}: {first_line(exc, 120)}); download it where there is network "
            f"(hf download {model} --local-dir DIR) and pass --model DIR, or set SBERT_MODEL=DIR"
        ) from None


def read_layout(model_dir: Path) -> ModelLayout:
    """Read modules.json, the pooling config and sentence_bert_config.json, or default to plain transformers."""
    modules_file = model_dir / "modules.json"
    if not modules_file.exists():
        if not (model_dir / "config.json").exists():
            raise ModelError(f"{model_dir}: no config.json or modules.json; this is not a model directory")
        return ModelLayout(model_dir, "mean", None, False)
    transformer_dir: Path | None = None
    pooling = PoolingConfig()
    head: list[HeadLayer] = []
    for module in read_json(modules_file):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        module_dir = model_dir / module.get("path", "")
        if kind == "Transformer" and transformer_dir is None:
            transformer_dir = module_dir
        elif kind == "Pooling" and transformer_dir is not None and not head:
            pooling = read_pooling(module_dir / "config.json")
        elif kind in ("Dense", "Normalize") and transformer_dir is not None:
            head.append(read_dense(module_dir) if kind == "Dense" else NormalizeLayer())
        else:
            raise ModelError(f"{modules_file}: module '{module.get('type')}' is not supported here (sbert runs Transformer, Pooling, then Dense and Normalize)")
    if transformer_dir is None:
        raise ModelError(f"{modules_file}: no Transformer module listed")
    st_config_file = transformer_dir / "sentence_bert_config.json"
    st_config = read_json(st_config_file) if st_config_file.exists() else {}
    return ModelLayout(
        transformer_dir=transformer_dir,
        pooling=pooling.mode,
        max_seq_length=st_config.get("max_seq_length"),
        do_lower_case=bool(st_config.get("do_lower_case", False)),
        include_prompt=pooling.include_prompt,
        head=tuple(head),
    )


def _pick_max_length(layout: ModelLayout, config: dict[str, Any], override: int | None) -> int:
    """sentence-transformers' rule: max_seq_length if configured, else the tokenizer's limit capped by the
    position embeddings; an override may lower it but never exceed the position embeddings."""
    positions = int(config.get("max_position_embeddings") or config.get("n_positions") or 512)
    if override is not None:
        if override < 2 or override > positions:
            raise UsageError(f"--max-length {override}: this model takes 2 to {positions} tokens")
        return override
    if layout.max_seq_length:
        return int(layout.max_seq_length)
    tokenizer_file = layout.transformer_dir / "tokenizer_config.json"
    tokenizer_config = read_json(tokenizer_file) if tokenizer_file.exists() else {}
    return int(min(tokenizer_config.get("model_max_length") or positions, positions))
