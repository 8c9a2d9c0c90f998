"""What a person sees: the progress bar on a terminal, --help's panels and choices, tables in display columns, plots."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import unicodedata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sbert_cli import cli
from tests.conftest import FAKE_CLI_CHILD, ROOT, FakeEncoder
from tests.test_cli import error_of, run
from tests.test_unattended import write_texts


def read_terminal(args: list, delay: float) -> str:
    """Run the real command with its stderr on a pseudo-terminal, as a person watching it would; all it drew."""
    main, child_end = pty.openpty()
    fcntl.ioctl(child_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 columns wide
    env = {**os.environ, "FAKE_DELAY": str(delay)}
    child = subprocess.Popen([sys.executable, "-c", FAKE_CLI_CHILD, *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=child_end)
    os.close(child_end)
    chunks = []
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:  # the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    assert child.wait(timeout=60) == 0
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_the_progress_bar_moves_within_the_first_window(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_texts(source, 300)
    drawn = read_terminal(["encode", source, "-o", tmp_path / "out.parquet", "--chunk-size", "300", "--batch-size", "5"], delay=0.03)
    # One window holds the whole file: every percentage below 100 was drawn while it was being encoded.
    percentages = {int(value) for value in re.findall(r"(\d+)%", drawn)}
    assert len({p for p in percentages if p < 100}) >= 3, drawn
    assert 100 in percentages
    assert "rows" in drawn and "sbert: 300 rows" in drawn


def test_quiet_and_piped_runs_draw_no_bar(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = tmp_path / "in.jsonl"
    write_texts(source, 20)
    result = run("encode", source, "-o", tmp_path / "out.parquet")
    assert result.exit_code == 0
    assert "%" not in result.stderr and result.stderr.count("\n") == 1  # the summary only


def test_help_groups_options_in_panels_and_lists_the_choices() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sbert_cli", "encode", "--help"], cwd=ROOT, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}
    )
    assert result.returncode == 0
    for panel in ("Input", "Model", "Batching", "Output", "Unattended runs", "Ray"):
        assert re.search(rf"╭─ {panel} ─", result.stdout), panel
    for choices in ("<csv|tsv|jsonl|parquet>", "<auto|cpu|cuda|cuda:N>", "<auto|fp32|bf16|fp16|int8>", "<float32|float16|int8|uint8|binary|ubinary>", "<fail|skip>", "<local|ray>"):
        assert choices in result.stdout, choices


@pytest.mark.parametrize(
    ("command", "usage", "flag"),
    [
        ("encode", "sbert encode [OPTIONS] INPUT", r"--normalize +L2-normalise the vectors \(after"),
        ("sim", "sbert sim [OPTIONS] SENTENCES...", r"--json +One JSON object on stdout\."),
        ("evaluate", "sbert evaluate [OPTIONS] FILES...", r"--quiet +-q +No messages on stderr\."),
    ],
)
def test_help_draws_flags_as_flags_and_every_value_one_way(command: str, usage: str, flag: str) -> None:
    result = CliRunner().invoke(cli.app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    page = result.stdout
    assert f"Usage: {usage}" in [line.strip() for line in page.splitlines()]
    for wrong in ("<bool>", "{", "<list[", "[auto|"):
        assert wrong not in page, wrong
    assert re.search(flag, page), flag  # a flag is followed by its help, not by a value's metavar
    assert re.search(r"--help +Show this message and exit\.", page)
    for choices in (r"--precision +<auto\|fp32\|bf16\|fp16\|int8>", r"--device +<auto\|cpu\|cuda\|cuda:N>"):
        assert re.search(choices, page), choices


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--precision", "int4", "Invalid value for '--precision': 'int4' is not one of 'auto', 'fp32', 'bf16', 'fp16', 'int8'."),
        ("--device", "gpu", "Invalid value for '--device': 'gpu' is not one of 'auto', 'cpu', 'cuda', 'cuda:N'."),
        ("--on-error", "ignore", "Invalid value for '--on-error': 'ignore' is not one of 'fail', 'skip'."),
        ("--engine", "spark", "Invalid value for '--engine': 'spark' is not one of 'local', 'ray'."),
        ("--dtype", "int4", "Invalid value for '--dtype': 'int4' is not one of 'float32', 'float16', 'int8', 'uint8', 'binary', 'ubinary'."),
        ("--format", "xml", "Invalid value for '--format' / '-f': 'xml' is not one of 'csv', 'tsv', 'jsonl', 'parquet'."),
    ],
)
def test_a_wrong_choice_is_one_line(tmp_path: Path, option: str, value: str, message: str) -> None:
    result = run("encode", tmp_path / "x.jsonl", option, value)
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {message} (see 'sbert encode --help')"
    assert len(result.stderr.strip().splitlines()) == 1


def display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def pair_file(path: Path) -> Path:
    rows = [("今天天气很好", "今天是晴天", 4), ("我想退款", "怎么把钱退回来", 5), ("苹果", "香蕉", 0), ("他在跑步", "他在游泳", 1), ("猫", "一只猫", 3), ("你好", "再见", 0)]
    path.write_text("".join(f"{a}\t{b}\t{label}\n" for a, b, label in rows), encoding="utf-8")
    return path


def test_evaluate_table_is_aligned_in_display_columns(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    first, second = pair_file(tmp_path / "中文问答对.tsv"), pair_file(tmp_path / "en.tsv")
    result = run("evaluate", first, second, "-q")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split("|")[2].strip() == "中文问答对"
    assert len({display_width(line) for line in lines}) == 1, lines
    pipes = [[display_width(line[:i]) for i, ch in enumerate(line) if ch == "|"] for line in lines]
    assert all(columns == pipes[0] for columns in pipes), lines
    assert lines[1].replace("|", "").strip("-") == ""  # Markdown's header rule


def test_worst_lists_that_many_pairs(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    pairs = pair_file(tmp_path / "pairs.tsv")
    result = run("evaluate", pairs, "--worst", "5", "-q")
    assert result.exit_code == 0, result.output
    table = result.stdout.split("worst pairs of pairs:\n")[1].splitlines()
    assert [cell.strip() for cell in table[0].split("|")[1:-1]] == ["sentence1", "sentence2", "label", "cosine", "rank gap"]
    assert len(table) == 2 + 5
    gaps = [float(line.split("|")[-2]) for line in table[2:]]
    assert gaps == sorted(gaps, reverse=True)
    data = json.loads(run("evaluate", pairs, "--worst", "2", "--json", "-q").stdout)
    assert len(data["results"][0]["worst"]) == 2 and set(data["results"][0]["worst"][0]) == {"first", "second", "label", "cosine", "rank_gap"}


def test_plot_writes_a_png_with_legible_set_names(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs the plot extra")
    from sbert_cli import plot

    first, second = pair_file(tmp_path / "中文问答对.tsv"), pair_file(tmp_path / "en.tsv")
    out = tmp_path / "scores.png"
    result = run("evaluate", first, second, "--plot", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    if plot.cjk_font() is None:
        # Without a font that draws Chinese, the panel titles name sets by number instead of drawing boxes.
        assert "sbert: no CJK font is installed, so the plot names sets by number (set 1 = 中文问答对; set 2 = en)" in result.stderr
    else:
        assert "CJK" not in result.stderr
    assert error_of(run("evaluate", first, "--plot", tmp_path / "scores.pdf")) == f"sbert: error: --plot {tmp_path / 'scores.pdf'}: name a .png file"
