"""`evaluate --plot`: the model's similarity against gold label, one panel per set, written as a PNG (the optional `plot` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sbert_cli.errors import UsageError
from sbert_cli.evaluate import PairScore
from sbert_cli.io.publish import staged
from sbert_cli.io.writers import output_errors
from sbert_cli.report import correlation_text
from sbert_cli.words import plural

_PROBE = "中文"


def plot_scores(scores: Sequence[PairScore], path: str) -> str | None:
    """Write the scatter plots to `path`; returns a note for stderr when set names had to be replaced."""
    if Path(path).suffix.lower() != ".png":
        raise UsageError(f"--plot {path}: name a .png file")
    if not Path(path).parent.is_dir():
        raise UsageError(f"--plot {path}: directory '{Path(path).parent}' does not exist; create it first")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'sbert-cli[plot]'") from None
    font = cjk_font()
    legible = font is not None or all(score.name.isascii() for score in scores)
    names = [score.name if legible else f"set {index}" for index, score in enumerate(scores, 1)]
    figure, axes = plt.subplots(1, len(scores), figsize=(4.2 * len(scores), 4), squeeze=False)
    jitter = np.random.default_rng(0)
    for axis, score, name in zip(axes[0], scores, names):
        levels = np.unique(score.labels)
        spread = 0.3 * float(np.min(np.diff(levels))) if 1 < len(levels) <= 10 else 0.0  # discrete labels: spread the columns
        axis.scatter(score.labels + jitter.uniform(-spread / 2, spread / 2, len(score.labels)), score.similarities, s=6, alpha=0.35)
        title = f"{name}\nSpearman {correlation_text(score.spearman)} ({plural(score.pairs, 'pair')})"
        axis.set_title(title, fontproperties=font) if font is not None else axis.set_title(title)
        axis.set_xlabel("gold label")
        axis.set_ylabel(score.similarity)
    figure.tight_layout()
    with output_errors(path), staged(path) as temp:
        figure.savefig(temp, dpi=110, format="png")
    plt.close(figure)
    if legible:
        return None
    listed = "; ".join(f"set {index} = {score.name}" for index, score in enumerate(scores, 1))
    return f"no CJK font is installed, so the plot names sets by number ({listed}); install one, e.g. fonts-noto-cjk"


def cjk_font() -> Any:
    """FontProperties of an installed font that draws Chinese, or None; matplotlib's default draws boxes."""
    from matplotlib import font_manager, ft2font

    preferred = ("Noto Sans CJK", "Noto Sans SC", "Source Han Sans", "WenQuanYi", "Droid Sans Fallback", "AR PL", "SimHei", "Microsoft YaHei", "PingFang")
    fonts = sorted(font_manager.fontManager.ttflist, key=lambda entry: not entry.name.startswith(preferred))
    for entry in fonts:
        try:
            charmap = ft2font.FT2Font(entry.fname).get_charmap()
        except (OSError, RuntimeError, ValueError):
            continue
        glyphs = {charmap.get(ord(char)) for char in _PROBE}
        # A real CJK font draws each character its own way; a fallback font (matplotlib ships
        # "Last Resort") maps a whole block to one box.
        if None not in glyphs and len(glyphs) == len(_PROBE):
            return font_manager.FontProperties(fname=entry.fname, size=11)
    return None
