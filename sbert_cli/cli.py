"""Thin Typer commands: parse options, call the stages, print results, map errors to exit codes."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from sbert_cli import __version__
from sbert_cli.errors import InputDataError, OutputError, SbertError, UsageError

if TYPE_CHECKING:
    from sbert_cli.encoder import TransformerEncoder

DEFAULT_MODEL = "DMetaSoul/sbert-chinese-general-v1"  # kept in sync with encoder.DEFAULT_MODEL by a test

app = typer.Typer(
    name="sbert",
    help="Chinese sentence embeddings in bulk: encode files, compare sentences, evaluate on pair sets.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ModelOption = Annotated[
    str,
    typer.Option("--model", "-m", envvar="SBERT_MODEL", help="Hub id or local directory (sentence-transformers or transformers layout)."),
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N; auto takes CUDA when available.")]
PrecisionOption = Annotated[str, typer.Option(help="Forward pass precision: auto, fp32, bf16 or fp16 (vectors are float32).")]
MaxLengthOption = Annotated[Optional[int], typer.Option(help="Truncate texts to this many tokens (default: the model's).")]
BatchSizeOption = Annotated[int, typer.Option(min=1, help="Most rows in one forward pass.")]
MaxTokensOption = Annotated[int, typer.Option(min=1, help="Most padded tokens (longest x rows) in one forward pass.")]


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"sbert: error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Our errors become one line on stderr and their exit code; Ctrl-C exits 130; a closed stdout exits quietly."""
    try:
        yield
    except SbertError as error:
        raise _fail(str(error), error.exit_code) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; no output was written", 130) from None
    except BrokenPipeError:
        # The reader of our stdout has gone (e.g. `| head`): point stdout at /dev/null so exit does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(141) from None


def _load(model: str, device: str, precision: str, max_length: int | None, normalize: bool, quiet: bool) -> TransformerEncoder:
    from sbert_cli.encoder import load_encoder

    if not quiet:
        typer.echo(f"sbert: loading {model}", err=True)
    return load_encoder(model, device=device, precision=precision, max_length=max_length, normalize=normalize)


EXIT_WITH_REJECTS = 3  # the run completed, but some rows went to the rejects file instead of the output


@app.command()
def encode(
    input: Annotated[str, typer.Argument(help="CSV, TSV, JSONL or Parquet file; - reads stdin.", show_default=False)],
    output: Annotated[
        Optional[str],
        typer.Option("--output", "-o", help="Output .parquet, .npy (+ .ids.jsonl) or .jsonl; - writes JSON lines to stdout; a directory gets Parquet shards and a manifest. Default: <input stem>.embeddings.parquet beside the input."),
    ] = None,
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="Input format: csv, tsv, jsonl or parquet (default: from the extension; sniffed on stdin).")] = None,
    text_column: Annotated[str, typer.Option(help="Column or field holding the text.")] = "text",
    id_column: Annotated[Optional[str], typer.Option(help="Column or field holding the id (default: 0-based row numbers).")] = None,
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "fp32",
    max_length: MaxLengthOption = None,
    normalize: Annotated[bool, typer.Option("--normalize", help="L2-normalise the vectors.")] = False,
    dtype: Annotated[str, typer.Option(help="Stored vector type: float32 or float16.")] = "float32",
    chunk_size: Annotated[int, typer.Option(min=1, help="Rows read, sorted and batched at a time; bounds memory.")] = 10_000,
    batch_size: BatchSizeOption = 32,
    max_tokens: MaxTokensOption = 16_384,
    on_error: Annotated[str, typer.Option(help="fail: stop at the first bad row (exit 1). skip: write it to <output>.rejects.jsonl and go on (exit 3 if any).")] = "fail",
    shard_rows: Annotated[int, typer.Option(min=1, help="Input rows per Parquet shard when -o is a directory.")] = 100_000,
    resume: Annotated[bool, typer.Option("--resume", help="Finish an interrupted directory output: encode only the shards its manifest lacks.")] = False,
    with_stats: Annotated[bool, typer.Option("--with-stats", help="Add n_tokens and truncated columns.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no summary; errors still go to stderr.")] = False,
    engine: Annotated[str, typer.Option(help="local, or ray: Ray Data actors over a file, directory or glob, into -o DIRECTORY.")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster to join (auto: the running one; default: a local Ray sized to this machine).")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Ray encoder actors (default: what fits, leaving a CPU for reading).")] = None,
    cpus_per_worker: Annotated[float, typer.Option(min=0, help="CPUs each Ray actor reserves (and its torch threads).")] = 1.0,
    gpus_per_worker: Annotated[float, typer.Option(min=0, help="GPUs each Ray actor reserves.")] = 0.0,
) -> None:
    """Encode a file of texts into vectors, written in input order."""
    from sbert_cli.shards import is_directory_output

    with _user_errors():
        if engine not in ("local", "ray"):
            raise UsageError(f"--engine {engine}: expected local or ray")
        if on_error not in ("fail", "skip"):
            raise UsageError(f"--on-error {on_error}: expected fail or skip")
    if engine == "ray":
        with _user_errors():
            if resume or with_stats:
                raise UsageError("--engine ray writes a fresh directory: --resume and --with-stats need --engine local")
            if output is None or not is_directory_output(output):
                raise UsageError("--engine ray needs -o DIRECTORY for its Parquet shards")
            _encode_with_ray(
                input, output, format, text_column, id_column, on_error, model, device, precision, max_length,
                normalize, dtype, chunk_size, batch_size, max_tokens, shard_rows, ray_address, workers,
                cpus_per_worker, gpus_per_worker, quiet,
            )
        return
    from sbert_cli.pipeline import BatchPlan, encode_rows
    from sbert_cli.readers import STDIN, InputSpec, detect_format, iter_rows
    from sbert_cli.shards import ShardedSink, identify_input, prepare_directory, remove_stale_temporaries
    from sbert_cli.writers import FileSink, RejectsWriter, check_dtype, default_output_path, describe_model, make_writer, output_spec

    with _user_errors():
        spec = InputSpec(input, detect_format(input, format), text_column, id_column)
        if input != STDIN and not Path(input).exists():
            raise UsageError(f"{input}: no such file; check the path")
        if output is None:
            if input == STDIN:
                raise UsageError("reading stdin needs -o: a .parquet, .npy or .jsonl file, or - for JSON lines on stdout")
            output = default_output_path(input)
        sharded = is_directory_output(output)
        if sharded:
            check_dtype(dtype)
            try:
                Path(output).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"{output}: cannot create the output directory ({exc.strerror})") from None
        else:
            out_spec = output_spec(output, dtype)
            if resume:
                raise UsageError("--resume needs -o DIRECTORY: only sharded output keeps a manifest to resume from")
            if on_error == "skip" and output == "-":
                raise UsageError("--on-error skip needs an output file or directory to put the rejects beside; -o - has none")
            if input != STDIN and output != "-" and Path(output).resolve() == Path(input).resolve():
                raise UsageError(f"{output}: is the input file; pass another -o")
        encoder = _load(model, device, precision, max_length, normalize, quiet)
        info = encoder.info
        metadata = describe_model(info, dtype)
        stats_length = info.max_length if with_stats else None
        plan = BatchPlan(chunk_size=chunk_size, batch_size=batch_size, max_tokens=max_tokens).for_device(info.device)
        with _output_lock_for(output), _stop_on_signals(output if sharded else None) as check_stop:
            if sharded:
                options = {
                    "model": info.name, "dim": info.dim, "pooling": info.pooling, "normalize": info.normalize,
                    "max_length": info.max_length, "precision": info.precision, "format": spec.format,
                    "text_column": text_column, "id_column": id_column, "dtype": dtype, "shard_rows": shard_rows,
                    "on_error": on_error, "with_stats": with_stats,
                }
                manifest = prepare_directory(Path(output), identify_input(input), options, resume)
                remove_stale_temporaries(Path(output))
                sink = ShardedSink(Path(output), manifest, shard_rows, info.dim, metadata, dtype, stats_length)
            else:
                rejects = RejectsWriter(_rejects_path(output)) if output != "-" else None
                sink = FileSink(make_writer(out_spec, info.dim, metadata, stats_length), rejects)
            try:
                with _progress(quiet) as on_rows:
                    stats = encode_rows(iter_rows(spec), encoder, sink, plan, on_error == "skip", check_stop, on_rows)
                if stats.rows + stats.rejected + stats.resumed_rows == 0:
                    raise InputDataError(f"{spec.name}: no rows to encode")
                sink.finish()
            except BaseException:
                sink.abort()
                raise
    if not quiet:
        typer.echo(_summary(stats, info.dim, info.max_length, output, sharded), err=True)
    if stats.rejected:
        raise typer.Exit(EXIT_WITH_REJECTS)


def _encode_with_ray(
    input: str, output: str, format: str | None, text_column: str, id_column: str | None, on_error: str, model: str,
    device: str, precision: str, max_length: int | None, normalize: bool, dtype: str, chunk_size: int,
    batch_size: int, max_tokens: int, shard_rows: int, ray_address: str | None, workers: int | None,
    cpus_per_worker: float, gpus_per_worker: float, quiet: bool,
) -> None:
    from sbert_cli.encoder import available_cores
    from sbert_cli.ray_engine import RayJob, expand_inputs, plan_resources, run_ray_job
    from sbert_cli.readers import detect_format
    from sbert_cli.writers import check_dtype

    check_dtype(dtype)
    ray_address = ray_address or os.environ.get("RAY_ADDRESS") or None  # Ray's own variable joins a cluster too
    inputs = expand_inputs(input)
    for path in inputs:
        detect_format(path, format)  # an unknown extension fails here, not on a worker
    cores = available_cores()
    job = RayJob(
        inputs=tuple(inputs), output=output, format=format, text_column=text_column, id_column=id_column,
        on_error=on_error, model=model, device=device, precision=precision, max_length=max_length,
        normalize=normalize, dtype=dtype, chunk_size=chunk_size, batch_size=batch_size, max_tokens=max_tokens,
        shard_rows=shard_rows, workers=plan_resources(ray_address, workers, cpus_per_worker, gpus_per_worker, cores),
        cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
    )
    if not quiet:
        where = ray_address or f"a local Ray with {cores} CPUs"
        typer.echo(f"sbert: encoding {len(inputs)} file(s) with {job.workers} worker(s) on {where}", err=True)
    result = run_ray_job(job, ray_address, cores)
    if not quiet:
        parts = [f"sbert: {result.rows} rows"]
        if result.rejected:
            parts.append(f"{result.rejected} rejected -> {output}/rejects/")
        parts += [f"{result.shards} shards", f"{result.seconds:.1f} s", f"{result.rows / max(result.seconds, 1e-9):.1f} rows/s -> {output}"]
        typer.echo(", ".join(parts), err=True)
    if result.rejected:
        raise typer.Exit(EXIT_WITH_REJECTS)


def _rejects_path(output: str) -> str:
    """out.parquet -> out.rejects.jsonl"""
    return str(Path(output).with_suffix(".rejects.jsonl"))


@contextmanager
def _output_lock_for(output: str) -> Iterator[None]:
    """Files and directories are locked against a second run; stdout needs no lock."""
    from sbert_cli.writers import output_lock

    if output == "-":
        yield
    else:
        with output_lock(output):
            yield


@contextmanager
def _stop_on_signals(shard_directory: str | None) -> Iterator[Callable[[], None]]:
    """SIGINT/SIGTERM ask the run to stop after the current batch; a second one stops it at once."""
    from sbert_cli.pipeline import Interrupted

    received: list[int] = []

    def request_stop(signum: int, frame: object) -> None:
        received.append(signum)
        if len(received) > 1:
            raise Interrupted(_stopped_message(signum, shard_directory), 128 + signum)

    def check_stop() -> None:
        if received:
            raise Interrupted(_stopped_message(received[0], shard_directory), 128 + received[0])

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield check_stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped_message(signum: int, shard_directory: str | None) -> str:
    name = signal.Signals(signum).name
    if shard_directory is None:
        return f"stopped by {name}; no output was written"
    return f"stopped by {name}; finished shards are kept in {shard_directory}, rerun with --resume to finish"


def _summary(stats, dim: int, max_length: int, output: str, sharded: bool) -> str:
    where = "stdout" if output == "-" else output
    parts = [f"sbert: {stats.rows} rows"]
    if stats.rejected:
        rejects = f"{output}/part-*.rejects.jsonl" if sharded else _rejects_path(output)
        parts.append(f"{stats.rejected} rejected -> {rejects}")
    if sharded:
        parts.append(f"{stats.shards_written} shards encoded, {stats.shards_resumed} already done ({stats.resumed_rows} rows)")
    parts += [
        f"dim {dim}",
        f"{stats.seconds:.1f} s",
        f"{stats.rows_per_second:.1f} rows/s",
        f"{stats.truncated} truncated to {max_length} tokens -> {where}",
    ]
    return ", ".join(parts)


@contextmanager
def _progress(quiet: bool) -> Iterator[object]:
    """A rows and rows/s bar on stderr, only when a person is watching it."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(unit=" rows", file=sys.stderr, dynamic_ncols=True, smoothing=0.1) as bar:
        yield bar.update


@app.command()
def sim(
    sentences: Annotated[list[str], typer.Argument(help="A sentence, then one or more to compare it with.", show_default=False)],
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "fp32",
    max_length: MaxLengthOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Print the cosine similarity of the first sentence with each of the others, one per line."""
    from sbert_cli.pipeline import embed_texts
    from sbert_cli.similarity import cosine_rows

    with _user_errors():
        if len(sentences) < 2:
            raise UsageError("sim needs at least two sentences: sbert sim \"句子A\" \"句子B\"")
        encoder = _load(model, device, precision, max_length, False, quiet=True)
        vectors = embed_texts(sentences, encoder)
        scores = cosine_rows(vectors[1:], vectors[:1].repeat(len(sentences) - 1, axis=0))
        if as_json:
            result = {
                "model": model,
                "sentence": sentences[0],
                "similarities": [{"sentence": text, "cosine": float(score)} for text, score in zip(sentences[1:], scores)],
            }
            typer.echo(json.dumps(result, ensure_ascii=False))
        else:
            for score in scores:
                typer.echo(f"{score:.4f}")


@app.command()
def evaluate(
    files: Annotated[list[str], typer.Argument(help="Pair files: headerless 'sentence1, sentence2, label' TSV/CSV, or named columns.", show_default=False)],
    columns: Annotated[Optional[str], typer.Option(help="Names of the two sentence columns and the label, e.g. sentence1,sentence2,label.")] = None,
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "fp32",
    max_length: MaxLengthOption = None,
    batch_size: BatchSizeOption = 32,
    max_tokens: MaxTokensOption = 16_384,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout instead of a table.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No messages on stderr.")] = False,
) -> None:
    """Spearman and Pearson (x100) of cosine similarity against gold labels, one column per file."""
    from sbert_cli.evaluate import name_pair_sets, parse_columns, read_pairs, score_pair_sets
    from sbert_cli.pipeline import BatchPlan

    with _user_errors():
        names = parse_columns(columns)
        sets = name_pair_sets([read_pairs(path, names) for path in files])
        encoder = _load(model, device, precision, max_length, False, quiet)
        plan = BatchPlan(batch_size=batch_size, max_tokens=max_tokens).for_device(encoder.info.device)
        scores = score_pair_sets(sets, encoder, plan)
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "model": model,
                        "results": [
                            {"name": s.name, "file": s.path, "pairs": s.pairs, "spearman": s.spearman, "pearson": s.pearson}
                            for s in scores
                        ],
                    },
                    ensure_ascii=False,
                )
            )
            return
        typer.echo(format_table(["", *(s.name for s in scores)], [
            ["spearman", *(f"{s.spearman:.2f}" for s in scores)],
            ["pearson", *(f"{s.pearson:.2f}" for s in scores)],
            ["pairs", *(str(s.pairs) for s in scores)],
        ]))


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, readable in a terminal and pasteable into a model card."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(header, widths)) + " |"]
    lines.append("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for row in rows:
        lines.append("| " + " | ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in enumerate(zip(row, widths))) + " |")
    return "\n".join(lines)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sbert {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """Chinese sentence embeddings in bulk: encode files, compare sentences, evaluate on pair sets."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
