"""Frontier labels: a tight cluster of points gets labels that neither cover each other nor the legend,
stay inside the axes, and are tied to their points by a leader line when they had to move."""

from __future__ import annotations

import itertools

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from study.analysis.labels import PointLabel, place_labels, text_box


def test_labels_of_a_tight_cluster_do_not_overlap() -> None:
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    xs = [1.0, 1.02, 1.04, 1.05, 1.07, 1.1, 1.12, 1.15]
    ys = [0.30, 0.31, 0.315, 0.32, 0.322, 0.33, 0.335, 0.34]
    axes.plot(xs, ys, "o", label="points")
    axes.plot([0.5, 4.0], [0.0, 0.4], alpha=0)  # room around the cluster
    axes.legend(loc="lower right")
    labels = [PointLabel(x, y, f"K={1024 * i} B=256 L=200", "C0") for i, (x, y) in enumerate(zip(xs, ys))]
    annotations = place_labels(axes, labels)
    canvas = figure.canvas
    assert isinstance(canvas, FigureCanvasAgg)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [text_box(a, renderer) for a in annotations]  # the texts, not their leader lines
    assert len(boxes) == len(labels)
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    legend = axes.get_legend().get_window_extent(renderer)
    assert not any(box.overlaps(legend) for box in boxes)
    inside = axes.get_window_extent(renderer)
    assert all(inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
               for box in boxes)
    # eight labels 0.04 apart in y at most cannot all sit beside their points: some moved, with a leader
    assert any(a.arrow_patch is not None for a in annotations)
    assert {a.get_text() for a in annotations} == {label.text for label in labels}


def test_a_label_near_the_right_edge_goes_left_of_its_point() -> None:
    figure = Figure(figsize=(5, 3))
    axes = figure.add_subplot()
    axes.plot([0.0, 10.0], [0.0, 1.0], "o")
    (annotation,) = place_labels(axes, [PointLabel(10.0, 0.5, "K=4096 B=1024 L=200", "C1")])
    assert annotation.get_horizontalalignment() == "right"
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    assert annotation.get_window_extent(renderer).x1 <= axes.get_window_extent(renderer).x1
