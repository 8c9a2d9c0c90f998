"""A BERT checkpoint in OpenVINO's format: traced once from sbert's own BERT at fp32, kept on disk beside the model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from sbert_cli.backends.bert import TorchLinears, bert_from_checkpoint
from sbert_cli.backends.weights import checkpoint_file
from sbert_cli.model.description import OPENVINO_CONVERSIONS, ModelDescription

# Raised whenever the traced graph changes, so that a conversion an older sbert made is never reused.
GRAPH_VERSION = 1


def conversion_options(model: ModelDescription) -> dict[str, Any]:
    """What the conversion depends on: the graph's version, the converter's and tracer's versions, the checkpoint
    (its file's name, size and modification time) and the config. Any change makes a new conversion."""
    import openvino
    import torch

    weights = checkpoint_file(model.layout.transformer_dir)
    identity = None
    if weights is not None:
        stat = weights.stat()
        identity = {"file": weights.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {
        "graph": GRAPH_VERSION,
        "openvino": openvino.__version__,
        "torch": torch.__version__,
        "weights": identity,
        "config": model.config,
        "inputs": {"input_ids": "int32 [rows, tokens]", "attention_mask": "bool [rows, tokens]"},
        "output": "float32 token states [rows, tokens, hidden]",
    }


def converted_model(model: ModelDescription) -> Path | None:
    """The model's OpenVINO IR (model.xml): the one on disk for these options, else converted now and saved.

    Saved in the model's directory when it is writable, else in the user's cache directory. A conversion is
    written into a temporary folder and renamed into place whole, so a reader (or a concurrent run) never sees
    half of one. None when the checkpoint is not one sbert's BERT reads (transformers' backend runs it instead).
    """
    options = conversion_options(model)
    if options["weights"] is None:
        return None
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:20]
    roots = conversion_roots(model)
    for root in roots:
        if (root / key / "model.xml").is_file():
            return root / key / "model.xml"
    for root in roots:
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=_made(root)))
        except OSError:
            continue  # not writable: the next place
        return _convert_into(model, options, staging, root / key)
    return None


def conversion_roots(model: ModelDescription) -> list[Path]:
    """Where conversions are kept, in order: beside the model (one folder per set of options), then the user's cache directory."""
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [model.layout.transformer_dir / OPENVINO_CONVERSIONS, cache_home / "sbert" / "openvino"]


def _made(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return root


def _convert_into(model: ModelDescription, options: dict[str, Any], staging: Path, final: Path) -> Path | None:
    """Trace, convert and save into `staging`, then rename it to `final`; the path of final's model.xml."""
    import openvino

    try:
        graph = trace_openvino(model)
        if graph is None:
            return None
        openvino.save_model(graph, staging / "model.xml", compress_to_fp16=False)  # fp32 weights: the precision is chosen at compile
        (staging / "options.json").write_text(json.dumps(options, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        try:
            staging.rename(final)
        except OSError:
            if not (final / "model.xml").is_file():  # not a concurrent run that got there first
                raise
        return final / "model.xml"
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def trace_openvino(model: ModelDescription) -> Any:
    """sbert's BERT at fp32 on plain torch products, traced into an OpenVINO model with dynamic rows and tokens."""
    import openvino
    import torch

    # Query, key and value as three products: the pattern OpenVINO fuses into its attention kernel (one product split
    # in three cost a copy of each).
    bert = bert_from_checkpoint(model, TorchLinears(torch.float32, torch.device("cpu"), fused_qkv=False))
    if bert is None:
        return None

    class TokenStates(torch.nn.Module):
        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return bert(input_ids, attention_mask)

    example = (torch.ones((2, 8), dtype=torch.int32), torch.ones((2, 8), dtype=torch.bool))
    inputs = [("input_ids", [-1, -1], openvino.Type.i32), ("attention_mask", [-1, -1], openvino.Type.boolean)]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values it treats as constants (none vary here)
        return openvino.convert_model(TokenStates(), example_input=example, input=inputs)
