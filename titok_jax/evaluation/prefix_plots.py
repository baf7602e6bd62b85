"""Pictures of a variable-length tokenizer's quality against how many tokens it decodes (k): a line plot of
each metric over k, and a grid of a few images decoded at every k (columns: the original, then k ascending).

matplotlib is imported inside `quality_plot` (Agg, no display, no pyplot state): importing the library stays
cheap, and a training run without token dropout never loads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from titok_jax import images

# What the plot shows, when the results hold it; the Inception metrics match with or without _random_inception.
PLOTTED = ("psnr", "ssim", "mse", "rfid", "is", "reconstruction_mse")
LOWER_IS_BETTER = ("mse", "rfid")


def plotted_metrics(by_num_tokens: Mapping[int, Mapping[str, float]]) -> list[str]:
    """The metric names of `by_num_tokens` that `quality_plot` draws, in PLOTTED order."""
    names = set().union(*(values.keys() for values in by_num_tokens.values())) if by_num_tokens else set()
    return [name for base in PLOTTED for name in sorted(names) if name.removesuffix("_random_inception") == base]


def quality_plot(
    by_num_tokens: Mapping[int, Mapping[str, float]], title: str = "", metrics: Sequence[str] | None = None
) -> np.ndarray:
    """uint8 (H, W, 3): one panel per metric (default: `plotted_metrics`), its value against k (log2 axis,
    ticks at the evaluated k)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = sorted(by_num_tokens)
    metrics = list(metrics) if metrics is not None else plotted_metrics(by_num_tokens)
    if not counts or not metrics:
        raise ValueError("A quality-vs-k plot needs at least one token count and one metric.")
    figure = Figure(figsize=(3.6 * len(metrics), 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    for index, name in enumerate(metrics):
        axes = figure.add_subplot(1, len(metrics), index + 1)
        axes.plot(counts, [by_num_tokens[k][name] for k in counts], marker="o")
        if len(counts) > 1:
            axes.set_xscale("log", base=2)
        axes.set_xticks(counts, [str(k) for k in counts])
        axes.set_xlabel("tokens decoded (k)")
        better = "lower" if name.removesuffix("_random_inception") in LOWER_IS_BETTER else "higher"
        axes.set_title(f"{name} ({better} is better)", fontsize=9)
        axes.grid(True, alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def prefix_grid(
    originals: np.ndarray, decoded: Mapping[int, np.ndarray], min_tile: int = images.MIN_TILE
) -> np.ndarray:
    """uint8 grid: a row per image, columns "original" then k ascending (labelled above), tiles upscaled to at
    least `min_tile` px (see images.labelled_columns)."""
    counts = sorted(decoded)
    columns = [images.GridRow("original", np.asarray(originals))]
    columns += [images.GridRow(f"k={k}", np.asarray(decoded[k])) for k in counts]
    return images.labelled_columns(columns, min_tile=min_tile)
