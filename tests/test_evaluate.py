"""Evaluation: our correlations against scipy, our pipeline against sentence-transformers' evaluator."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbert_cli.encoder import load_encoder
from sbert_cli.evaluate import name_pair_sets, read_pairs, score_pair_sets
from sbert_cli.similarity import average_ranks, pearson, spearman
from tests.conftest import ROOT, SAMPLE_DATA, SHARED_DATA, FakeEncoder, needs_shared
from tests.test_cli import error_of, run

STSB_DEV = SHARED_DATA / "csts" / "STS-B.valid.data"


@settings(max_examples=200, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(min_value=0, max_value=5), st.floats(min_value=-1, max_value=1, allow_nan=False)),
        min_size=3,
        max_size=60,
    )
)
def test_spearman_and_pearson_match_scipy(data: list[tuple[int, float]]) -> None:
    from scipy import stats

    labels = np.array([d[0] for d in data], dtype=float)
    scores = np.array([d[1] for d in data])
    np.testing.assert_allclose(average_ranks(scores), stats.rankdata(scores))
    if np.ptp(labels) > 0 and np.ptp(scores) > 0:
        assert spearman(scores, labels) == pytest.approx(stats.spearmanr(scores, labels).statistic, abs=1e-9)
        assert pearson(scores, labels) == pytest.approx(stats.pearsonr(scores, labels).statistic, abs=1e-9)


def test_pairs_formats_agree(tmp_path: Path) -> None:
    rows = [("甲", "乙", 1), ("丙", "丁", 0), ('他说"好"', "嗯", 3)]
    (tmp_path / "a.tsv").write_text("".join(f"{a}\t{b}\t{l}\n" for a, b, l in rows), encoding="utf-8")
    (tmp_path / "b.tsv").write_text("id\tsentence1\tsentence2\tlabel\n" + "".join(f"{i}\t{a}\t{b}\t{l}\n" for i, (a, b, l) in enumerate(rows)), encoding="utf-8")
    (tmp_path / "c.jsonl").write_text("".join(f'{{"q": "{a}", "d": "{b}", "y": {l}}}\n'.replace('"好"', '\\"好\\"') for a, b, l in rows), encoding="utf-8")
    a = read_pairs(str(tmp_path / "a.tsv"))
    b = read_pairs(str(tmp_path / "b.tsv"))  # a PAWS-X style header is recognised
    c = read_pairs(str(tmp_path / "c.jsonl"), ("q", "d", "y"))
    for other in (b, c):
        assert other.first == a.first and other.second == a.second
        np.testing.assert_array_equal(other.labels, a.labels)
    assert a.first[2] == '他说"好"'  # quotes in raw TSV are text


def test_each_sentence_is_encoded_once(tmp_path: Path) -> None:
    (tmp_path / "x.tsv").write_text("甲\t乙\t1\n甲\t丙\t0\n乙\t丙\t1\n", encoding="utf-8")
    encoder = FakeEncoder()
    seen: list[int] = []
    original = encoder.tokenize
    encoder.tokenize = lambda texts: (seen.append(len(texts)), original(texts))[1]  # type: ignore[method-assign]
    sets = name_pair_sets([read_pairs(str(tmp_path / "x.tsv")), read_pairs(str(tmp_path / "x.tsv"))])
    score_pair_sets(sets, encoder)
    assert seen == [3]


def write_pairs(path: Path, rows: list[tuple[str, str, object]]) -> Path:
    path.write_text("".join(f"{a}\t{b}\t{label}\n" for a, b, label in rows), encoding="utf-8")
    return path


def strict_json(text: str) -> dict:
    """json.loads as a strict parser reads it: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("label", ["nan", "inf", "-Infinity"])
def test_a_label_that_is_not_a_finite_number_is_a_bad_row(tmp_path: Path, fake_encoder: FakeEncoder, label: str) -> None:
    pairs = write_pairs(tmp_path / "bad.tsv", [("甲", "乙", 1), ("丙", "丁", label), ("戊", "己", 0)])
    result = run("evaluate", pairs)
    assert result.exit_code == 1
    assert error_of(result) == f"sbert: error: {pairs}:2: label '{label}' is not a finite number; give the pair a finite score or remove the row"


def test_a_nan_label_in_json_lines_is_a_bad_row(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    pairs = tmp_path / "bad.jsonl"
    pairs.write_text('{"q": "甲", "d": "乙", "y": 1}\n{"q": "丙", "d": "丁", "y": NaN}\n', encoding="utf-8")
    result = run("evaluate", pairs, "--columns", "q,d,y")
    assert result.exit_code == 1
    assert error_of(result) == f"sbert: error: {pairs}:2: label nan is not a finite number; give the pair a finite score or remove the row"


UNDEFINED = [
    ([("甲", "乙", 1)], "only 1 pair"),
    ([("甲", "乙", 3), ("丙", "丁", 3), ("戊", "己", 3)], "all labels are equal"),
    ([("甲", "甲", 1), ("乙", "乙", 2), ("丙", "丙", 3)], "all cosines are equal"),  # each pair is one sentence twice
]


@pytest.mark.parametrize(("rows", "reason"), UNDEFINED)
def test_an_undefined_correlation_says_so_and_why(tmp_path: Path, fake_encoder: FakeEncoder, rows: list, reason: str) -> None:
    pairs = write_pairs(tmp_path / "set.tsv", rows)
    result = run("evaluate", pairs, "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "|          |       set |",
        "|----------|-----------|",
        "| spearman | undefined |",
        "| pearson  | undefined |",
        f"| pairs    | {len(rows):>9} |",
        f"note: set: spearman and pearson are undefined: {reason}",
    ]
    data = strict_json(run("evaluate", pairs, SAMPLE_DATA / "pairs.tsv", "--json", "-q").stdout)
    undefined, defined = data["results"]
    assert undefined == {"name": "set", "file": str(pairs), "pairs": len(rows), "spearman": None, "pearson": None, "undefined": reason}
    assert isinstance(defined["spearman"], float) and isinstance(defined["pearson"], float) and defined["undefined"] is None


def test_worst_pairs_and_plot_of_an_undefined_set_show_no_nan(tmp_path: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs the plot extra")
    from matplotlib.axes import Axes

    titles: list[str] = []
    set_title = Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda axis, label, *args, **kwargs: (titles.append(label), set_title(axis, label, *args, **kwargs))[1])
    pairs = write_pairs(tmp_path / "same.tsv", UNDEFINED[1][0])
    result = run("evaluate", pairs, "--worst", "3", "--plot", tmp_path / "same.png", "-q")
    assert result.exit_code == 0, result.output
    assert "nan" not in result.stdout.lower()
    assert titles == ["same\nSpearman undefined (3 pairs)"]
    data = strict_json(run("evaluate", pairs, "--worst", "3", "--json", "-q").stdout)
    worst = data["results"][0]["worst"]
    assert len(worst) == 3 and all(math.isfinite(pair[key]) for pair in worst for key in ("label", "cosine", "rank_gap"))


def test_the_evaluation_data_can_live_anywhere(tmp_path: Path) -> None:
    """SBERT_SHARED_DATA points the tests at the data; without it at hand, the skip reason says so."""
    code = "from tests.conftest import SHARED_DATA, needs_shared; print(SHARED_DATA); print(needs_shared.kwargs['reason'])"
    env = {**os.environ, "SBERT_SHARED_DATA": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == [
        str(tmp_path / "data"),
        f"needs the evaluation data at {tmp_path / 'data'} (the evaluation sets, Chinese config and vocab); set SBERT_SHARED_DATA=/path/to/data",
    ]


@needs_shared
def test_all_seven_card_sets_read() -> None:
    files = {
        "csts/STS-B.valid.data": 1458,
        "csts/STS-B.test.data": 1361,
        "afqmc/dev.txt": 4316,
        "lcqmc/LCQMC.valid.data": 8802,
        "bq/BQ.valid.data": 10000,
        "pawsx/dev_2k.tsv": 2000,
        "pawsx/PAWSX.valid.data": 2000,
        "xiaobu/dev.txt": 10000,
    }
    sets = name_pair_sets([read_pairs(str(SHARED_DATA / name)) for name in files])
    assert [len(s.labels) for s in sets] == list(files.values())
    assert [s.name for s in sets] == [
        "STS-B.valid", "STS-B.test", "afqmc/dev", "LCQMC.valid", "BQ.valid", "dev_2k", "PAWSX.valid", "xiaobu/dev"
    ]


@needs_shared
@pytest.mark.slow
def test_stsb_dev_spearman_matches_sentence_transformers(minilm_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    pairs = read_pairs(str(STSB_DEV))
    ours = score_pair_sets([pairs], load_encoder(str(minilm_dir), device="cpu", precision="fp32"))[0]
    evaluator = EmbeddingSimilarityEvaluator(pairs.first, pairs.second, pairs.labels.tolist(), batch_size=64, write_csv=False)
    theirs = evaluator(SentenceTransformer(str(minilm_dir), device="cpu"))
    key = next(k for k in theirs if k.endswith("spearman_cosine"))
    assert ours.pairs == 1458
    assert abs(ours.spearman - 100 * theirs[key]) <= 0.01
