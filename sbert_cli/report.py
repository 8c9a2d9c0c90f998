"""What the commands print: run summaries, stage timings and tables measured in display columns (CJK is two wide)."""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sbert_cli.words import plural

if TYPE_CHECKING:
    from sbert_cli.cache import ProfileSummary
    from sbert_cli.evaluate import PairScore, WorstPair
    from sbert_cli.model.description import ModelInfo
    from sbert_cli.ray_engine import RayResult
    from sbert_cli.stats import EncodeStats


def summary_line(stats: EncodeStats, info: ModelInfo, *, where: str, rejects: str, sharded: bool, cached: bool) -> str:
    """One line on stderr after an encode run: what was written, from where, how fast."""
    parts = [f"sbert: {plural(stats.rows, 'row')}"]
    if stats.rejected:
        parts.append(f"{stats.rejected} rejected -> {rejects}")
    if stats.repeated_ids:
        parts.append(stats.repeated_ids)
    if sharded:
        shards = f"{plural(stats.shards_written, 'shard')} encoded"
        if stats.shards_resumed:  # only a resumed run has anything to say here
            shards += f", {stats.shards_resumed} already done ({plural(stats.resumed_rows, 'row')})"
        parts.append(shards)
    if cached:
        parts.append(f"{stats.cached} from the cache, {stats.encoded} encoded")
    if stats.fp32_rows:
        parts.append(f"{plural(stats.fp32_rows, 'row')} re-run at fp32")
    parts += [
        f"dim {info.dim}",
        f"{info.precision}{gate_note(info)} on {info.device}",
        f"{stats.seconds:.1f} s" + (f" ({stats.one_time_seconds:.1f} s of it a one-time step)" if stats.one_time_seconds >= 0.05 else ""),
        f"{stats.rows_per_second:.1f} rows/s",
        f"{stats.truncated} truncated to {info.max_length} tokens -> {where}",
    ]
    return ", ".join(parts)


def gate_note(info: ModelInfo) -> str:
    """int8's quality-gate figures, for the summary line ('' for other precisions)."""
    figures = dict(info.quality)
    if "int8_min_cosine" not in figures:
        return ""
    return f" (min cosine {figures['int8_min_cosine']} to fp32, ranking {figures['int8_ranking_spearman']})"


def ray_summary_line(result: RayResult, where: str) -> str:
    """One line on stderr after an --engine ray run."""
    from sbert_cli.io.paths import DirectoryLayout

    if result.nothing_to_do:
        return f"sbert: {where} is complete; nothing to do"

    parts = [f"sbert: {plural(result.rows, 'row')}"]
    if result.rejected:
        parts.append(f"{result.rejected} rejected -> {DirectoryLayout.at(where).rejects}/")
    if result.repeated_ids:
        parts.append(result.repeated_ids)
    shards = f"{plural(result.shards, 'shard')} encoded"
    if result.rounds_before:  # a resumed run: what it did again and what it took as done
        shards += f", {result.rounds_before} of {plural(result.rounds, 'round')} already done ({plural(result.resumed_rows, 'row')})"
    parts += [shards, f"{result.seconds:.1f} s", f"{result.rows / max(result.seconds, 1e-9):.1f} rows/s -> {where}"]
    return ", ".join(parts)


def timings_line(stats: EncodeStats) -> str:
    """--verbose: where the time went and how much of the work was padding, for tuning a run."""
    stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stats.stage_seconds.items())
    padding = stats.padded_tokens / stats.real_tokens if stats.real_tokens else 1.0
    forward = stats.stage_seconds["forward"]
    rate = stats.real_tokens / forward if forward > 0 else 0.0
    memory = (
        f"; out of device memory {stats.out_of_memory} times, batches then cut to {stats.token_budget} padded tokens"
        if stats.out_of_memory
        else ""
    )
    return (
        f"sbert: stages (overlapping threads): {stages}; model load {stats.load_seconds:.1f} s; "
        f"{stats.encoded} texts encoded, {stats.repeated} repeats reused; {stats.real_tokens} real tokens "
        f"in {stats.batches} batches, padding {padding:.2f}x, {rate:.0f} tokens/s{memory}"
    )


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], terminal: bool, text_columns: int = 1) -> str:
    """A rich table on a terminal; elsewhere a Markdown table, aligned in display columns, to paste in a model card.

    The first `text_columns` are left-aligned; the rest hold numbers and are right-aligned.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.ROUNDED if terminal else box.MARKDOWN, show_header=True, header_style="bold" if terminal else None)
    for index, name in enumerate(header):
        table.add_column(name, justify="left" if index < text_columns else "right", no_wrap=not terminal)
    for row in rows:
        table.add_row(*row)
    buffer = io.StringIO()
    console = Console(file=buffer, width=None if terminal else 10_000, force_terminal=terminal, color_system="auto" if terminal else None)
    console.print(table)
    lines = [line.rstrip() for line in buffer.getvalue().splitlines()]
    return "\n".join(line for line in lines if line.strip())


def scores_table(scores: Sequence[PairScore], terminal: bool) -> str:
    """Spearman, Pearson and pairs per file. A set whose correlation is undefined says so, and a note under the table
    says why. Correlated with anything but the cosine of float32 vectors, a last line says with what (after a blank
    line, so that Markdown does not take it for a row)."""
    functions = sorted({score.similarity for score in scores})
    stored = sorted({score.dtype for score in scores} - {"float32"})
    table = render_table(
        ["", *(score.name for score in scores)],
        [
            ["spearman", *(correlation_text(score.spearman) for score in scores)],
            ["pearson", *(correlation_text(score.pearson) for score in scores)],
            ["pairs", *(str(score.pairs) for score in scores)],
        ],
        terminal,
    )
    lines = [table, *(f"note: {score.name}: spearman and pearson are undefined: {score.undefined}" for score in scores if score.undefined)]
    if functions not in ([], ["cosine"]) or stored:
        of = f" of {', '.join(stored)} vectors" if stored else ""
        lines += ["", f"{', '.join(functions)} similarity{of} against the labels, x100"]
    return "\n".join(lines)


def correlation_text(value: float | None) -> str:
    """A correlation x100 as the table and the plot show it: two decimals, or 'undefined'."""
    return "undefined" if value is None else f"{value:.2f}"


def worst_table(name: str, pairs: Sequence[WorstPair], terminal: bool, similarity: str = "cosine") -> str:
    rows = [[pair.first, pair.second, f"{pair.label:g}", f"{pair.similarity:.4f}", f"{pair.rank_gap:.0f}"] for pair in pairs]
    return f"worst pairs of {name}:\n" + render_table(["sentence1", "sentence2", "label", similarity, "rank gap"], rows, terminal, text_columns=2)


def cache_table(path: str, size: int, profiles: Sequence[ProfileSummary], terminal: bool) -> str:
    rows = [
        [
            profile.model,
            str(profile.description["precision"]),
            str(profile.description["max_length"]),
            f"{profile.description['pooling']}{', normalized' if profile.description['normalize'] else ''}",
            str(profile.vectors),
            f"{profile.bytes / 2**20:.1f}",
            time.strftime("%Y-%m-%d", time.localtime(profile.used)),
        ]
        for profile in profiles
    ]
    total = sum(profile.vectors for profile in profiles)
    table = render_table(["model", "precision", "max length", "pooling", "vectors", "MiB", "last used"], rows, terminal, text_columns=4)
    return f"{path}: {total} vectors, {size / 2**20:.1f} MiB on disk\n{table}"
