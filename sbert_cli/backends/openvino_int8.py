"""--precision int8 on OpenVINO: the converted model quantized once (NNCF static post-training quantization), held to
a quality gate against fp32, kept beside the model with the options that made it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from sbert_cli.backends.base import Target
from sbert_cli.backends.bert import bert_supported
from sbert_cli.backends.openvino_bert import OpenVinoBert, compile_on_cpu, openvino_installed
from sbert_cli.backends.openvino_export import conversion_options, converted_model
from sbert_cli.errors import ModelError, UsageError
from sbert_cli.model.derived import OPENVINO_INT8, derived_roots, find_derived, write_derived
from sbert_cli.model.description import ModelDescription
from sbert_cli.model.device import cpu_has_native_bf16
from sbert_cli.model.int8_texts import CALIBRATION_TEXTS, CHECK_TEXTS

INSTALL_HINT = "pip install 'sbert-cli[int8]'"
# Raised whenever what is quantized, or how, changes, so that an older sbert's int8 model is never reused.
QUANTIZATION_VERSION = 2
# The gate: every check text's int8 vector within this cosine of its fp32 vector, and the order of the check pairs'
# similarities kept (Spearman between int8's and fp32's cosines over every pair of check texts).
MIN_COSINE = 0.98
MIN_RANKING = 0.99
# The scheme chosen is the fastest whose check texts all keep this cosine: 32 texts see fewer outliers than a corpus
# (all-MiniLM-L6-v2 with every linear product quantized: 0.9829 on them, 0.9658 over the 5,166 texts of STS-B test
# and valid, and Spearman there 0.45-0.57 points below fp32), so a scheme that only scrapes past MIN_COSINE is kept
# only when no safer one passes.
SAFE_COSINE = 0.99
GATE_FILE = "gate.json"


@dataclass(frozen=True)
class Gate:
    """What the gate measured on CHECK_TEXTS: the int8 model against the fp32 one, both through sbert's pooling."""

    min_cosine: float
    ranking: float
    texts: int
    scheme: str = ""  # which products stayed in higher precision (SCHEMES)

    @property
    def passed(self) -> bool:
        return self.min_cosine >= MIN_COSINE and self.ranking >= MIN_RANKING

    def figures(self) -> tuple[tuple[str, str], ...]:
        """For the output's metadata, beside the precision."""
        return (
            ("int8_min_cosine", f"{self.min_cosine:.4f}"), ("int8_ranking_spearman", f"{self.ranking:.4f}"), ("int8_gate_texts", str(self.texts)),
            ("int8_kept_in_higher_precision", self.scheme),
        )

    def refusal(self, name: str) -> str:
        failed = []
        if self.min_cosine < MIN_COSINE:
            failed.append(f"a text's cosine to fp32 fell to {self.min_cosine:.4f} (at least {MIN_COSINE} needed)")
        if self.ranking < MIN_RANKING:
            failed.append(f"the ranking moved (Spearman {self.ranking:.4f} to fp32, at least {MIN_RANKING} needed)")
        return f"--precision int8: {name} quantized to int8 fails the quality gate: {' and '.join(failed)}; pass --precision bf16 or fp32"


class OpenVinoInt8Bert(OpenVinoBert):
    """The int8 model on OpenVINO's kernels, fed and pooled as OpenVinoBert is; `quality` is the gate's figures."""

    name = "openvino-int8"

    def __init__(self, compiled: Any, target: Target, gate: Gate) -> None:
        super().__init__(compiled, target)
        self.quality = gate.figures()

    @classmethod
    def load(cls, model: ModelDescription, target: Target) -> OpenVinoInt8Bert | None:
        """The backend for --precision int8 (None for any other precision); one line where int8 cannot run or fails its gate."""
        if model.info.precision != "int8":
            return None
        check_int8_runs(model, target)
        try:
            folder, gate = quantized_model(model, target)
        except ImportError as exc:  # nncf's or the runtime's own imports
            raise UsageError(f"--precision int8: {exc}; {INSTALL_HINT}") from None
        if not gate.passed:
            raise ModelError(gate.refusal(model.info.name))
        return cls(compile_for(folder / "model.xml", target), target, gate)


def check_int8_runs(model: ModelDescription, target: Target) -> None:
    """One line where --precision int8 cannot run: off the CPU, without OpenVINO or NNCF, on torch's backend."""
    if target.device_kind != "cpu":
        raise UsageError(f"--precision int8 runs on the CPU (--device cpu); on {target.device_kind} pass --precision fp16")
    if model.backend == "torch":
        raise UsageError("--precision int8 runs on the OpenVINO backend only; pass --backend auto or openvino")
    if not openvino_installed():
        raise UsageError(f"--precision int8 needs the OpenVINO backend, which is not installed: {INSTALL_HINT}, or pass --precision bf16")
    if find_spec("nncf") is None:
        raise UsageError(f"--precision int8 quantizes the model once with NNCF, which is not installed: {INSTALL_HINT}, or pass --precision bf16")
    if not bert_supported(model.config):
        raise UsageError(f"--precision int8: {model.info.name} is not a BERT model sbert converts to OpenVINO; pass --precision bf16 or fp32")


def runtime_precision() -> str:
    """What OpenVINO runs the ops left unquantized at (attention, layer norms, the kept products): bf16 where the CPU
    multiplies it natively, else f32."""
    return "bf16" if cpu_has_native_bf16() else "f32"


def compile_for(model_xml: Path | Any, target: Target, precision: str | None = None) -> Any:
    """The int8 model on disk (through OpenVINO's model cache, as openvino_bert compiles), or a graph in memory (the
    gate's), compiled for throughput."""
    return compile_on_cpu(model_xml, precision or runtime_precision(), target.threads)


def quantization_options(model: ModelDescription) -> dict[str, Any]:
    """The conversion's options plus how it was quantized and checked: any change makes a new int8 model."""
    import hashlib
    from importlib.metadata import version

    texts = hashlib.sha256(json.dumps([CALIBRATION_TEXTS, CHECK_TEXTS], ensure_ascii=False).encode()).hexdigest()[:16]
    return conversion_options(model) | {
        "int8": {
            # NNCF's version read without importing it (1-2 s of every run)
            "version": QUANTIZATION_VERSION, "nncf": version("nncf"), "model_type": "transformer",
            "schemes": [scheme for scheme, _ in SCHEMES], "texts": texts,
            "runtime_precision": runtime_precision(), "min_cosine": MIN_COSINE, "min_ranking": MIN_RANKING, "safe_cosine": SAFE_COSINE,
        }
    }


def quantized_model(model: ModelDescription, target: Target) -> tuple[Path, Gate]:
    """The int8 model's folder and its gate: the one on disk for these options, else quantized and checked now.

    A model that fails the gate keeps only its figures, so that later runs refuse at once without quantizing again."""
    fp32_xml = converted_model(model)  # its own one-time step, the first time
    if fp32_xml is None:
        raise UsageError(f"--precision int8: {model.info.name}'s checkpoint is not one sbert converts to OpenVINO; pass --precision bf16 or fp32")
    options = quantization_options(model)
    roots = derived_roots(model.layout.transformer_dir, OPENVINO_INT8, "openvino-int8")
    what = "quantizing the model to int8 (calibrated on sample texts, then checked against fp32)"
    folder = find_derived(roots, options) or write_derived(roots, options, lambda staging: _quantize_into(model, target, fp32_xml, staging), what)
    if folder is None:
        raise ModelError(f"--precision int8: no writable place to keep {model.info.name}'s int8 model (its folder or the user cache); pass --precision bf16")
    figures = json.loads((folder / GATE_FILE).read_text(encoding="utf-8"))
    return folder, Gate(figures["min_cosine"], figures["ranking"], figures["texts"], figures["scheme"])


def _quantize_into(model: ModelDescription, target: Target, fp32_xml: Path, staging: Path) -> bool:
    """Quantize by each scheme in turn, fastest first, and keep the first whose gate clears SAFE_COSINE; else the first
    that passes the gate at all; where none does, keep only the last one's figures (the refusal's)."""
    import openvino

    from sbert_cli.model.tokenizer import Tokenizer

    tokenizer = Tokenizer(model)
    fp32 = openvino.Core().read_model(fp32_xml)
    feeds = calibration_feeds(tokenizer, target.pad_id)
    chosen: tuple[Any, Gate] | None = None
    for scheme, kept in SCHEMES:
        int8 = quantize_ir(openvino.Core().read_model(fp32_xml), feeds, kept(fp32, model.config))
        gate = replace(check_gate(fp32, int8, tokenizer, target, model.info.dim), scheme=scheme)
        if gate.passed and gate.min_cosine >= SAFE_COSINE:
            chosen = (int8, gate)
            break
        if gate.passed and chosen is None:
            chosen = (int8, gate)
    if chosen is not None:
        int8, gate = chosen
        openvino.save_model(int8, staging / "model.xml", compress_to_fp16=False)
    figures = {"min_cosine": gate.min_cosine, "ranking": gate.ranking, "texts": gate.texts, "scheme": gate.scheme}
    (staging / GATE_FILE).write_text(json.dumps(figures) + "\n", encoding="utf-8")
    return True


# NNCF's transformer scheme quantizes the query and key going into OpenVINO's fused attention (the scores' product):
# on all-MiniLM-L6-v2 that alone let a text fall to cosine 0.56 from fp32 and cost STS-B 0.9 points, with every
# linear product left in higher precision (docs/speed.md). Attention's own products stay in bf16/f32.
NEVER_QUANTIZED = ("ScaledDotProductAttention",)


def quantize_ir(fp32: Any, feeds: list[dict[str, np.ndarray]], kept: list[str]) -> Any:
    """NNCF's static post-training quantization with its transformer scheme (layer norms and softmax stay
    unquantized), the fused attention (NEVER_QUANTIZED) and the `kept` products left in higher precision too."""
    import contextlib
    import io
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)
    # NNCF draws progress bars on stdout, where the vectors may be going: the one-time step's own line says it all.
    with contextlib.redirect_stdout(io.StringIO()):
        return nncf.quantize(
            fp32, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds),
            ignored_scope=nncf.IgnoredScope(names=kept, types=list(NEVER_QUANTIZED), validate=False), preset=nncf.QuantizationPreset.PERFORMANCE,
        )


def feed_forward_outputs(graph: Any, config: dict[str, Any]) -> list[str]:
    """The feed-forward output products (intermediate -> hidden), in the graph's order (one a layer). Their inputs,
    after GELU, carry the outliers a per-tensor int8 scale holds worst."""
    intermediate = config.get("intermediate_size")
    found = []
    for op in graph.get_ordered_ops():
        if op.get_type_name() == "MatMul":
            width = op.input(0).get_partial_shape()[-1]
            if width.is_static and width.get_length() == intermediate:
                found.append(op.get_friendly_name())
    return found


def first_half_kept(graph: Any, config: dict[str, Any]) -> list[str]:
    outputs = feed_forward_outputs(graph, config)
    return outputs[: max(1, len(outputs) // 2)]


# What stays in higher precision, tried in this order (fastest first) until the gate passes. Measured (docs/speed.md):
# on the bert-base-shaped stand-in every linear product quantized passes (0.9995) and runs at int8's speed; on
# all-MiniLM-L6-v2 its check texts stay at 0.9829, short of SAFE_COSINE, and the first half of the layers'
# feed-forward outputs kept gives 0.9944 with Spearman equal to fp32's on STS-B valid (all of them: 0.9957), at
# bf16 speed for those products (the feed-forward outputs are a third of the linear products' work).
SCHEMES: tuple[tuple[str, Callable[[Any, dict[str, Any]], list[str]]], ...] = (
    ("none", lambda graph, config: []),
    ("feed-forward outputs, first half of the layers", first_half_kept),
    ("feed-forward outputs", feed_forward_outputs),
)


def calibration_feeds(tokenizer: Any, pad_id: int) -> list[dict[str, np.ndarray]]:
    """One feed a calibration text, and the texts run together six at a time for the lengths of paragraphs."""
    texts = list(CALIBRATION_TEXTS)
    texts += ["".join(texts[start : start + 6]) for start in range(0, len(CALIBRATION_TEXTS), 6)]
    tokens = tokenizer(texts)
    feeds = []
    for row in range(len(texts)):
        ids, lengths = tokens.padded(np.array([row]), pad_id)
        feeds.append({"input_ids": ids, "attention_mask": np.arange(ids.shape[1]) < lengths[:, None]})
    return feeds


def check_gate(fp32: Any, int8: Any, tokenizer: Any, target: Target, dim: int) -> Gate:
    """The check texts through both models (fp32 at f32, int8 as it will run) and sbert's pooling: the lowest cosine
    between a text's two vectors, and how well int8 keeps the order of the pairs' similarities."""
    from sbert_cli.similarity import cosine_rows

    texts = list(CHECK_TEXTS)
    tokens = tokenizer(texts)
    batches = [np.arange(start, min(start + 8, len(texts))) for start in range(0, len(texts), 8)]
    vectors = []
    for graph, precision in ((fp32, "f32"), (int8, None)):
        out = np.zeros((len(texts), dim), dtype=np.float32)
        OpenVinoBert(compile_for(graph, target, precision), target).embed_batches(tokens, batches, out, lambda rows: None)
        vectors.append(out)
    reference, quantized = vectors
    pairs = np.triu_indices(len(texts), k=1)
    return Gate(float(cosine_rows(quantized, reference).min()), spearman(_pair_cosines(quantized)[pairs], _pair_cosines(reference)[pairs]), len(texts))


def _pair_cosines(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (float similarities: ties do not occur in practice)."""
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])
