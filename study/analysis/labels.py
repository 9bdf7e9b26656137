"""Point labels that do not cover each other: the frontier figures name each frontier point by its
configuration, and frontier points sit close together where quality rises steeply at small memory.

Each label starts beside its point (right of it, or left near the right edge) and, if its box meets a
label placed before it or the legend, moves up and down in steps of its own height until it is clear and
inside the axes; a label that moved off its point gets a thin leader line. Boxes are measured with the
figure's final layout, so the labels land where they are drawn."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox

MAX_STEPS = 16


@dataclass(frozen=True)
class PointLabel:
    x: float
    y: float
    text: str
    color: str


def place_labels(axes: Axes, labels: Sequence[PointLabel], *, fontsize: float = 6.5,
                 gap_points: float = 4.0) -> list[Annotation]:
    """Annotate `labels` on `axes` without overlaps; call it after everything else is drawn on the
    figure (limits, legend), since it measures the final layout. Returns the annotations."""
    figure = axes.get_figure()
    if not isinstance(figure, Figure):
        raise ValueError("axes: not on a figure")
    if not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure)  # a renderer to measure text with; savefig works as before
    axes.autoscale_view()
    figure.draw_without_rendering()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    inside = axes.get_window_extent(renderer)
    legend = axes.get_legend()
    taken: list[Bbox] = [legend.get_window_extent(renderer)] if legend is not None else []
    points_to_pixels = figure.dpi / 72.0
    placed = []
    for label in sorted(labels, key=lambda item: -item.y):
        annotation = _place_one(axes, label, renderer, inside, taken, fontsize, gap_points,
                                points_to_pixels)
        taken.append(text_box(annotation, renderer))
        placed.append(annotation)
    return placed


def _place_one(axes: Axes, label: PointLabel, renderer: RendererBase, inside: Bbox, taken: list[Bbox],
               fontsize: float, gap: float, points_to_pixels: float) -> Annotation:
    probe = axes.annotate(label.text, (label.x, label.y), textcoords="offset points", xytext=(gap, -gap),
                          ha="left", va="top", fontsize=fontsize, annotation_clip=False)
    box = probe.get_window_extent(renderer)
    align: Literal["left", "right"] = "left" if box.x1 <= inside.x1 else "right"
    dx = gap if align == "left" else -gap
    probe.set_horizontalalignment(align)
    height = box.height / points_to_pixels
    chosen = first_fit = None
    for step in range(2 * MAX_STEPS + 1):
        shift = (step + 1) // 2 * (1 if step % 2 else -1) * height  # 0, +h, -h, +2h, -2h, ...
        probe.xyann = (dx, -gap + shift)
        box = text_box(probe, renderer)
        if not _within(box, inside):
            continue
        first_fit = first_fit or probe.xyann
        if not any(box.overlaps(other) for other in taken):
            chosen = probe.xyann
            break
    probe.remove()
    offset = chosen or first_fit or (dx, -gap)
    moved = abs(offset[1] + gap) > 0.5 * height
    arrow = {"arrowstyle": "-", "color": label.color, "linewidth": 0.5, "alpha": 0.6} if moved else None
    annotation = axes.annotate(label.text, (label.x, label.y), textcoords="offset points", xytext=offset,
                               ha=align, va="top", fontsize=fontsize, color=label.color,
                               annotation_clip=False, arrowprops=arrow)
    annotation.set_in_layout(False)
    return annotation


def text_box(annotation: Annotation, renderer: RendererBase) -> Bbox:
    """Where the annotation's text is drawn (its leader line left out)."""
    annotation.update_positions(renderer)
    return Text.get_window_extent(annotation, renderer)


def _within(box: Bbox, inside: Bbox) -> bool:
    return box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0 and box.y1 <= inside.y1
