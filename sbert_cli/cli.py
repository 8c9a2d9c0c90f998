"""The commands: parse options into a job, call the stages, print the results; errors become one line and an exit code."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from sbert_cli import __version__
from sbert_cli.errors import EXIT_WITH_REJECTS, SbertError, UsageError
from sbert_cli.help_format import PlainHelpCommand, PlainHelpGroup
from sbert_cli.io.pipe import confirm_delivered
from sbert_cli.io.formats import INPUT_FORMATS, format_names, named_formats
from sbert_cli.choices import DEFAULT_MODEL, BackendChoice, Dtype, Engine, OnError, Precision, Quoting, Similarity
from sbert_cli.model.options import ModelOptions
from sbert_cli.plan import DEVICE_DEFAULTS, OPENVINO_BATCH_SHAPE

if TYPE_CHECKING:
    from sbert_cli.cache import VectorCache
    from sbert_cli.job import EncodeJob
    from sbert_cli.evaluate import PairScore, PairSet


class _OneLineErrors(PlainHelpGroup):
    """Typer's own usage errors (a bad choice, a missing argument) print as our one `sbert: error:` line, exit 2."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as error:
            context = getattr(error, "ctx", None)
            if type(error).__name__ == "NoArgsIsHelpError":  # `sbert` alone: its message is the help
                typer.echo(error.format_message())
            else:
                hint = f" (see '{context.command_path} --help')" if context is not None else ""
                message = error.format_message().replace("Value error, ", "")  # the choice checker's prefix
                typer.echo(f"sbert: error: {message}{hint}", err=True)
            code = error.exit_code
        except typer.Abort:
            typer.echo("sbert: error: aborted", err=True)
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _device(value: str) -> str:
    """auto, cpu, cuda or cuda:N: a fixed choice plus a device number."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise typer.BadParameter(f"'{value}' is not one of 'auto', 'cpu', 'cuda', 'cuda:N'.")
    return value


def _input_format(value: str) -> str:
    """A name in io.formats.INPUT_FORMATS, looked up when the option is parsed, so that a format added there is offered."""
    if value not in INPUT_FORMATS:
        raise typer.BadParameter(f"'{value}' is not one of {', '.join(repr(name) for name in format_names())}.")
    return value


app = typer.Typer(
    name="sbert",
    cls=_OneLineErrors,
    help="Chinese sentence embeddings in bulk: encode files, compare sentences, evaluate on pair sets.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
cache_app = typer.Typer(cls=PlainHelpGroup, help="Look into a vector cache file, or prune what is no longer wanted.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

INPUT, MODEL, BATCHING, OUTPUT, UNATTENDED, RAY = "Input", "Model", "Batching", "Output", "Unattended runs", "Ray"


ModelOption = Annotated[str, typer.Option("--model", "-m", envvar="SBERT_MODEL", rich_help_panel=MODEL, help="Hub id or local directory (sentence-transformers or transformers layout).")]
DeviceOption = Annotated[str, typer.Option(parser=_device, metavar="<auto|cpu|cuda|cuda:N>", rich_help_panel=MODEL, help="auto takes CUDA when torch sees a GPU.")]
PrecisionOption = Annotated[Precision, typer.Option(rich_help_panel=MODEL, help="Compute precision of the forward pass (how vectors are stored is --dtype); auto: fp16 on CUDA, bf16 on a CPU with native bf16, else fp32. int8: OpenVINO on a copy of the model quantized once (the int8 extra) and checked against fp32 (it refuses a model whose int8 vectors drift; docs/speed.md). Vectors are float32.")]
BackendOption = Annotated[BackendChoice, typer.Option(rich_help_panel=MODEL, help="What runs the forward pass. auto: OpenVINO on a CPU with native bf16 (installed with sbert on x86-64 Linux and Windows), else torch; sbert --version says which here. openvino: OpenVINO on any CPU (BERT models). torch: torch only.")]
MaxLengthOption = Annotated[Optional[int], typer.Option(rich_help_panel=MODEL, help="Truncate texts to this many tokens (default: the model's).")]
PromptOption = Annotated[Optional[str], typer.Option(rich_help_panel=MODEL, show_default="the model's default prompt, if it names one", help="Text put before every input, as sentence-transformers' prompt.")]
PromptNameOption = Annotated[Optional[str], typer.Option(rich_help_panel=MODEL, help="Put the model's prompt of this name before every input (its config_sentence_transformers.json), e.g. query.")]
TruncateDimOption = Annotated[Optional[int], typer.Option(min=1, rich_help_panel=MODEL, help="Keep the first N dimensions of each vector, after the model's own modules (sentence-transformers' truncate_dim).")]
SimilarityOption = Annotated[Optional[Similarity], typer.Option(rich_help_panel=MODEL, show_default="the model's similarity_fn_name, else cosine", help="How two vectors are compared; euclidean and manhattan give negative distances, as sentence-transformers does.")]
def _auto(option: str) -> str:
    """What auto means for a batching option, for --help: the CPU's (and OpenVINO's, where it has its own) and the GPU's defaults."""
    cpu = f"{getattr(DEVICE_DEFAULTS['cpu'], option)} on a CPU"
    if hasattr(OPENVINO_BATCH_SHAPE, option):
        cpu += f" ({getattr(OPENVINO_BATCH_SHAPE, option)} on OpenVINO)"
    return f"auto: {cpu}, {getattr(DEVICE_DEFAULTS['cuda'], option)} on CUDA"


BatchSizeOption = Annotated[Optional[int], typer.Option(min=1, rich_help_panel=BATCHING, show_default=_auto("batch_size"), help="Most rows in one forward pass.")]
MaxTokensOption = Annotated[Optional[int], typer.Option(min=1, rich_help_panel=BATCHING, show_default=_auto("max_tokens"), help="Most padded tokens (longest x rows) in one forward pass; cut in half for the rest of the run if the GPU runs out of memory.")]
CacheOption = Annotated[Optional[str], typer.Option(envvar="SBERT_CACHE", rich_help_panel=UNATTENDED, help="SQLite vector cache: texts encoded before with the same model and options are not encoded again.")]


@contextmanager
def _user_errors(prints: bool = False) -> Iterator[None]:
    """Our errors become one line on stderr and their exit code; Ctrl-C exits 130; a closed stdout exits 141.

    `prints`: the command's result goes to stdout, and only a reader that took all of it makes a success.
    """
    try:
        yield
        if prints:
            confirm_delivered(sys.stdout)
    except SbertError as error:
        typer.echo(f"sbert: error: {error}", err=True)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("sbert: error: interrupted; no output was written", err=True)
        raise typer.Exit(130) from None
    except BrokenPipeError:
        # The reader of our stdout has gone (e.g. `| head`): point stdout at /dev/null so exit does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(141) from None


@app.command(cls=PlainHelpCommand)
def encode(
    input: Annotated[str, typer.Argument(help=f"{named_formats()} file, a directory or glob of them (read in sorted-path order), or an s3:// key, prefix or glob; - reads stdin.", show_default=False)],
    format: Annotated[Optional[str], typer.Option("--format", "-f", parser=_input_format, metavar=f"<{'|'.join(format_names())}>", rich_help_panel=INPUT, help="Input format (default: from the extension; sniffed on stdin).")] = None,
    quoting: Annotated[Quoting, typer.Option(rich_help_panel=INPUT, help="How quotes are read. csv: a field may be quoted (holding separators, line ends and \"\" for a quote); none: a quote is text and a line is a row. auto: csv for CSV, none for TSV.")] = "auto",
    encoding: Annotated[str, typer.Option(rich_help_panel=INPUT, help="Encoding of a CSV, TSV or JSON lines input: any Python codec name, e.g. gb18030 for Excel's CSV on a Chinese Windows, utf-16.")] = "utf-8",
    text_column: Annotated[str, typer.Option(rich_help_panel=INPUT, help="Column or field holding the text; a dotted name (data.text) reaches into a nested JSON object or a Parquet struct, unless a column or key has that very name.")] = "text",
    id_column: Annotated[Optional[str], typer.Option(rich_help_panel=INPUT, help="Column or field holding the id, dotted like --text-column (default: 0-based row numbers).")] = None,
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    backend: BackendOption = "auto",
    max_length: MaxLengthOption = None,
    normalize: Annotated[bool, typer.Option("--normalize", rich_help_panel=MODEL, help="L2-normalise the vectors (after --truncate-dim, so shortened vectors are unit length again).")] = False,
    prompt: PromptOption = None,
    prompt_name: PromptNameOption = None,
    truncate_dim: TruncateDimOption = None,
    chunk_size: Annotated[Optional[int], typer.Option(min=1, rich_help_panel=BATCHING, show_default=_auto("chunk_size"), help="Rows read, sorted and batched at a time; bounds memory.")] = None,
    batch_size: BatchSizeOption = None,
    max_tokens: MaxTokensOption = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", rich_help_panel=OUTPUT, help="A .parquet, .npy (+ .ids.jsonl) or .jsonl file; - for JSON lines on stdout; a directory for Parquet shards; any of them as s3://BUCKET/KEY. Default: <input stem>.embeddings.parquet beside the input.")] = None,
    dtype: Annotated[Dtype, typer.Option(rich_help_panel=OUTPUT, help="Stored vector type (how the forward pass computes is --precision). int8/uint8: one byte a dimension, scaled by per-dimension ranges (from the first window, or --calibration) kept in the metadata; binary/ubinary: one bit a dimension, packed (sentence-transformers' quantize_embeddings).")] = "float32",
    calibration: Annotated[Optional[str], typer.Option(rich_help_panel=OUTPUT, help="With --dtype int8/uint8: a .npy of float vectors (rows x dim) whose per-dimension min and max set the ranges (default: the first window's).")] = None,
    with_stats: Annotated[bool, typer.Option("--with-stats", rich_help_panel=OUTPUT, help="Add n_tokens and truncated columns.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", rich_help_panel=OUTPUT, help="No progress bar, no summary; errors still go to stderr.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", rich_help_panel=OUTPUT, help="Also print stage timings, padding and tokens/s.")] = False,
    on_error: Annotated[OnError, typer.Option(rich_help_panel=UNATTENDED, help="fail: stop at the first bad row (exit 1). skip: write it to the rejects file and go on (exit 3 if any).")] = "fail",
    allow_empty: Annotated[bool, typer.Option("--allow-empty", rich_help_panel=UNATTENDED, help="An input with no data rows (a CSV/TSV header alone, an empty JSONL file, a Parquet file of 0 rows) writes an empty output of the model's schema and exits 0, instead of failing (exit 1).")] = False,
    shard_rows: Annotated[int, typer.Option(min=1, rich_help_panel=UNATTENDED, help="Input rows per Parquet shard when -o is a directory.")] = 100_000,
    resume: Annotated[bool, typer.Option("--resume", rich_help_panel=UNATTENDED, help="Finish what an earlier run of -o DIRECTORY left, start it if there is none, or do nothing if it is complete.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", rich_help_panel=UNATTENDED, help="Remove the shards an earlier run left in -o DIRECTORY and start over (files sbert did not write are never removed).")] = False,
    cache: CacheOption = None,
    engine: Annotated[Engine, typer.Option(rich_help_panel=RAY, help="ray: Ray Data actors over a file, directory or glob, into -o DIRECTORY.")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(envvar="RAY_ADDRESS", rich_help_panel=RAY, help="Ray cluster to join (auto: the running one; default: a local Ray sized to this machine).")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, rich_help_panel=RAY, help="Ray encoder actors (default: what fits, leaving a CPU for reading; where CUDA shows several GPUs and no --ray-address is given, an actor per GPU, each reserving one: blocks of rows go to whichever actor is free).")] = None,
    cpus_per_worker: Annotated[float, typer.Option(min=0, rich_help_panel=RAY, help="CPUs each Ray actor reserves (and its torch threads).")] = 1.0,
    gpus_per_worker: Annotated[float, typer.Option(min=0, rich_help_panel=RAY, help="GPUs each Ray actor reserves (default 0, or 1 in the actor-per-GPU default).")] = 0.0,
) -> None:
    """Encode a file of texts into vectors, written in input order."""
    from sbert_cli.job import EncodeJob, RayOptions, input_spec, output_target
    from sbert_cli.plan import BatchPlan

    with _user_errors():
        ray = RayOptions(ray_address, workers, cpus_per_worker, gpus_per_worker) if engine == "ray" else None
        job = EncodeJob(
            input=input_spec(input, format, text_column, id_column, quoting, encoding),
            output=output_target(output, input, dtype, calibration),
            model=ModelOptions(model, device, precision, max_length, normalize, prompt, prompt_name, truncate_dim, backend=backend),
            plan=BatchPlan(chunk_size=chunk_size, batch_size=batch_size, max_tokens=max_tokens),
            skip_bad_rows=on_error == "skip",
            allow_empty=allow_empty,
            shard_rows=shard_rows,
            resume=resume,
            overwrite=overwrite,
            with_stats=with_stats,
            cache=cache,
            ray=ray,
        )
        job.refuse_overwrites()
        rejected = _encode_with_ray(job, quiet, verbose) if ray is not None else _encode_locally(job, quiet, verbose)
    if rejected:
        raise typer.Exit(EXIT_WITH_REJECTS)


def _encode_locally(job: EncodeJob, quiet: bool, verbose: bool) -> int:
    from sbert_cli.io.readers import Extent
    from sbert_cli import encoder
    from sbert_cli.pipeline import Hooks, run_encode
    from sbert_cli.progress import progress_bar
    from sbert_cli.report import summary_line, timings_line
    from sbert_cli.signals import stop_on_signals

    kept = job.output.path if job.output.kind == "directory" else None
    with stop_on_signals(kept) as check_stop, progress_bar(quiet) as bar:
        report = run_encode(job, encoder.open_model, Hooks(check_stop, bar, _notice(quiet, bar)), Extent())
    stats = report.stats
    if stats.nothing_to_do:
        if not quiet:
            typer.echo(f"sbert: {job.output.shown} is complete; nothing to do", err=True)
        return 0
    if not quiet:
        sharded = job.output.kind == "directory"
        line = summary_line(stats, report.info, where=job.output.shown, rejects=report.rejects, sharded=sharded, cached=job.cache is not None)
        typer.echo(line, err=True)
        if verbose:
            typer.echo(timings_line(stats), err=True)
    return stats.rejected


def _notice(quiet: bool, bar: Any = None) -> Callable[[str], None]:
    """Where a run's notices go: nowhere under --quiet, above the progress bar when there is one, else stderr."""
    if quiet:
        return lambda message: None
    if bar is not None:
        return bar.write
    return lambda message: typer.echo(message, err=True)


def _encode_with_ray(job: EncodeJob, quiet: bool, verbose: bool) -> int:
    from sbert_cli.ray_engine import plan_ray_job
    from sbert_cli.ray_supervisor import run_supervised
    from sbert_cli.report import ray_summary_line

    assert job.ray is not None
    plan = plan_ray_job(job)
    result = run_supervised(job, plan, _notice(quiet), verbose)  # says what it encodes, and where, once Ray is there
    if not quiet:
        typer.echo(ray_summary_line(result, job.output.shown), err=True)
    return result.rejected


@app.command(cls=PlainHelpCommand)
def sim(
    sentences: Annotated[list[str], typer.Argument(help="A sentence, then one or more to compare it with.", show_default=False)],
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    backend: BackendOption = "auto",
    max_length: MaxLengthOption = None,
    prompt: PromptOption = None,
    prompt_name: PromptNameOption = None,
    truncate_dim: TruncateDimOption = None,
    similarity: SimilarityOption = None,
    cache: CacheOption = None,
    as_json: Annotated[bool, typer.Option("--json", rich_help_panel=OUTPUT, help="One JSON object on stdout.")] = False,
) -> None:
    """Print the similarity (the model's function, cosine unless it names another) of the first sentence with each of the others, one per line."""
    from sbert_cli.embedding import embed_texts, model_source
    from sbert_cli.similarity import similarity_rows

    with _user_errors(prints=True):
        if len(sentences) < 2:
            raise UsageError('sim needs at least two sentences: sbert sim "句子A" "句子B"')
        source = model_source(ModelOptions(model, device, precision, max_length, False, prompt, prompt_name, truncate_dim, similarity, backend, few_texts=True), cache)
        vectors = embed_texts(sentences, source)
        function = source.info.similarity
        scores = similarity_rows(vectors[1:], vectors[:1].repeat(len(sentences) - 1, axis=0), function)
        if as_json:
            similarities = [{"sentence": text, function: float(score)} for text, score in zip(sentences[1:], scores)]
            typer.echo(json.dumps({"model": model, "similarity": function, "sentence": sentences[0], "similarities": similarities}, ensure_ascii=False))
            return
        if function != "cosine":  # numbers that are not cosines say so, on stderr, so stdout stays one number a line
            typer.echo(f"sbert: {function} similarity" + (" (negative distance)" if function in ("euclidean", "manhattan") else ""), err=True)
        for score in scores:
            typer.echo(f"{score:.4f}")


@app.command(cls=PlainHelpCommand)
def evaluate(
    files: Annotated[list[str], typer.Argument(help="Pair files: headerless 'sentence1, sentence2, label' TSV/CSV, or named columns.", show_default=False)],
    columns: Annotated[Optional[str], typer.Option(rich_help_panel=INPUT, help="Names of the two sentence columns and the label, e.g. sentence1,sentence2,label.")] = None,
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    backend: BackendOption = "auto",
    max_length: MaxLengthOption = None,
    prompt: PromptOption = None,
    prompt_name: PromptNameOption = None,
    truncate_dim: TruncateDimOption = None,
    similarity: SimilarityOption = None,
    dtype: Annotated[Dtype, typer.Option(rich_help_panel=MODEL, help="Score the vectors as encode --dtype stores them, as sentence-transformers' EmbeddingSimilarityEvaluator precision does: normalised, int8/uint8 over each file's own ranges, binary bits as 0/1.")] = "float32",
    batch_size: BatchSizeOption = None,
    max_tokens: MaxTokensOption = None,
    cache: CacheOption = None,
    as_json: Annotated[bool, typer.Option("--json", rich_help_panel=OUTPUT, help="JSON on stdout instead of a table.")] = False,
    plot: Annotated[Optional[str], typer.Option(rich_help_panel=OUTPUT, help="Write a PNG: similarity against label, one panel per file (needs the plot extra).")] = None,
    worst: Annotated[int, typer.Option(min=0, rich_help_panel=OUTPUT, help="Also list the N pairs per file whose similarity rank is furthest from their label's.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", rich_help_panel=OUTPUT, help="No messages on stderr.")] = False,
) -> None:
    """Spearman and Pearson (x100) of the model's similarity (cosine unless it names another) against gold labels, one column per file."""
    from sbert_cli.embedding import model_source
    from sbert_cli.evaluate import name_pair_sets, parse_columns, read_pairs, score_pair_sets
    from sbert_cli.job import refuse_evaluate_overwrites
    from sbert_cli.plan import BatchPlan

    with _user_errors(prints=True):
        refuse_evaluate_overwrites(files, plot, cache)
        names = parse_columns(columns)
        sets = name_pair_sets([read_pairs(path, names) for path in files])
        options = ModelOptions(model, device, precision, max_length, False, prompt, prompt_name, truncate_dim, similarity, backend)
        source = model_source(options, cache, _notice(quiet))
        plan = BatchPlan(batch_size=batch_size, max_tokens=max_tokens).for_device(source.info.device)
        scores = score_pair_sets(sets, source, plan, dtype)
        if plot is not None:
            from sbert_cli.plot import plot_scores

            note = plot_scores(scores, plot)
            if note and not quiet:
                typer.echo(f"sbert: {note}", err=True)
        _print_scores(model, sets, scores, worst, as_json)


def _print_scores(model: str, sets: list[PairSet], scores: list[PairScore], worst: int, as_json: bool) -> None:
    from sbert_cli.evaluate import score_json, worst_pairs
    from sbert_cli.report import scores_table, worst_table

    worst_lists = [worst_pairs(pair_set, score, worst) for pair_set, score in zip(sets, scores)] if worst else None
    if as_json:
        results = [score_json(score, worst_lists[i] if worst_lists else None) for i, score in enumerate(scores)]
        described = {"similarity": scores[0].similarity, "dtype": scores[0].dtype}  # one model, one of each for every file
        # allow_nan=False: strict JSON parsers reject NaN, so a NaN that got this far must fail here, not downstream.
        typer.echo(json.dumps({"model": model, **described, "results": results}, ensure_ascii=False, allow_nan=False))
        return
    terminal = sys.stdout.isatty()
    typer.echo(scores_table(scores, terminal))
    for score, pairs in zip(scores, worst_lists or []):
        typer.echo("\n" + worst_table(score.name, pairs, terminal, score.similarity))


@cache_app.command("info", cls=PlainHelpCommand)
def cache_info(path: Annotated[str, typer.Argument(help="The cache file.", show_default=False)]) -> None:
    """The models in a cache, with their options, vector counts and size."""
    from sbert_cli.report import cache_table

    with _user_errors(prints=True):
        cache = _existing_cache(path)
        typer.echo(cache_table(path, cache.size_bytes(), cache.summary(), sys.stdout.isatty()))


@cache_app.command("prune", cls=PlainHelpCommand)
def cache_prune(
    path: Annotated[str, typer.Argument(help="The cache file.", show_default=False)],
    keep_model: Annotated[Optional[list[str]], typer.Option(help="Keep this model's vectors (repeatable); the others' go.")] = None,
    unused_days: Annotated[Optional[float], typer.Option(min=0, help="Remove vectors of models and options not used for this many days.")] = None,
) -> None:
    """Remove the vectors no longer wanted, so the file does not grow forever."""
    with _user_errors():
        if not keep_model and unused_days is None:
            raise UsageError("cache prune needs --keep-model NAME or --unused-days N; see 'sbert cache info' for the models")
        cache = _existing_cache(path)
        removed = cache.prune(keep_model or [], unused_days)
        typer.echo(f"sbert: removed {removed} vectors; {path} is {cache.size_bytes() / 2**20:.1f} MiB", err=True)


def _existing_cache(path: str) -> VectorCache:
    from pathlib import Path

    from sbert_cli.cache import VectorCache

    if not Path(path).is_file():
        raise UsageError(f"{path}: no such cache file; check the path")
    return VectorCache(path)


def _version(value: bool) -> None:
    if value:
        from sbert_cli.auto_choice import auto_choice

        typer.echo(f"sbert {__version__}")
        typer.echo(auto_choice())
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version, and the device, backend and precision auto picks on this machine and why.")] = False,
) -> None:
    """Chinese sentence embeddings in bulk: encode files, compare sentences, evaluate on pair sets."""


def main() -> None:
    """The console script: the command, then a quick exit (leaving.leave)."""
    from sbert_cli.leaving import leave

    try:
        app()
        code: object = 0
    except SystemExit as done:
        code = done.code
    leave(code)


if __name__ == "__main__":
    main()
