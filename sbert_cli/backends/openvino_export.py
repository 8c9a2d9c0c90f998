"""A BERT checkpoint in OpenVINO's format: traced once from sbert's own BERT at fp32, kept on disk beside the model."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from sbert_cli.backends.bert import TorchLinears, bert_from_checkpoint
from sbert_cli.backends.openvino_runtime import openvino_runtime
from sbert_cli.backends.weights import checkpoint_file
from sbert_cli.model.derived import OPENVINO_CONVERSIONS, derived_roots, find_derived, write_derived
from sbert_cli.model.description import ModelDescription

# Raised whenever the traced graph changes, so that a conversion an older sbert made is never reused.
GRAPH_VERSION = 1


def conversion_options(model: ModelDescription) -> dict[str, Any]:
    """What the conversion depends on: the graph's version, the converter's and tracer's versions, the checkpoint
    (its file's name, size and modification time) and the config. Any change makes a new conversion."""
    from importlib.metadata import version

    openvino = openvino_runtime()
    weights = checkpoint_file(model.layout.transformer_dir)
    identity = None
    if weights is not None:
        stat = weights.stat()
        identity = {"file": weights.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {
        "graph": GRAPH_VERSION,
        "openvino": openvino.__version__,
        "torch": version("torch"),  # torch.__version__ without importing it (1 s)
        "weights": identity,
        "config": model.config,
        "inputs": {"input_ids": "int32 [rows, tokens]", "attention_mask": "bool [rows, tokens]"},
        "output": "float32 token states [rows, tokens, hidden]",
    }


def converted_model(model: ModelDescription) -> Path | None:
    """The model's OpenVINO IR (model.xml): the one on disk for these options, else converted now and saved.

    Saved in the model's directory when it is writable, else in the user's cache directory, written whole
    (model.derived). None when the checkpoint is not one sbert's BERT reads (transformers' backend runs it instead).
    """
    options = conversion_options(model)
    if options["weights"] is None:
        return None
    roots = derived_roots(model.layout.transformer_dir, OPENVINO_CONVERSIONS, "openvino")
    what = "converting the model to OpenVINO's format, which runs it faster on this CPU"
    folder = find_derived(roots, options) or write_derived(roots, options, lambda staging: _convert_into(model, staging), what)
    return None if folder is None else folder / "model.xml"


def _convert_into(model: ModelDescription, staging: Path) -> bool:
    """Trace, convert and save into `staging`; False where sbert's BERT does not read the checkpoint."""
    import openvino

    graph = trace_openvino(model)
    if graph is None:
        return False
    openvino.save_model(graph, staging / "model.xml", compress_to_fp16=False)  # fp32 weights: the precision is chosen at compile
    return True


def trace_openvino(model: ModelDescription) -> Any:
    """sbert's BERT at fp32 on plain torch products, traced into an OpenVINO model with dynamic rows and tokens."""
    import openvino
    import torch
    from openvino.tools.ovc import convert_model  # not openvino.convert_model: openvino_runtime leaves it out

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
        return convert_model(TokenStates(), example_input=example, input=inputs)
