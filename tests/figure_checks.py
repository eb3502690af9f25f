"""Finds what a reader of a matplotlib figure would trip over.

`problems(figure)` lays the figure out as it will be drawn and reports:

- an axis label or title overlapping another panel (e.g. the y label of a
  right-hand panel drawn over the left one);
- a legend covering data: a bar, a line (anywhere along it) or a
  scatter point;
- a bar that cannot be seen (zero height, or below a log axis' bottom)
  with no text at its position saying so;
- a text drawn in a panel (an annotation) on a tick label, an axis label
  or another text.

`install()` checks every figure that is drawn to a file or shown inline
(`FigureCanvasBase.print_figure`, which `savefig` and IPython's inline
backend both use) and collects the problems in `FOUND`.
`tests/test_notebooks.py` installs it in each notebook's kernel.

Example:

>>> fig, ax = plt.subplots()
>>> ax.bar([0, 1], [1, 0])
>>> problems(fig)
['panel 1: the bar at x=1 has zero height and no label says so']
"""

import numpy as np
from matplotlib import backend_bases
from matplotlib import container

FOUND = []
_SLACK = 1.0  # pixels: touching is not overlapping


def problems(figure):
    """A list of sentences, one per defect; empty when the figure is fine."""
    figure.draw_without_rendering()  # runs tight/constrained layout
    renderer = figure._get_renderer()
    axes = [a for a in figure.axes if a.get_visible()]
    found = []
    for i, ax in enumerate(axes):
        name = f"panel {i + 1}"
        found += _labels_over_other_panels(ax, name, axes, renderer)
        found += _legend_over_data(ax, name, renderer)
        found += _invisible_bars(ax, name)
        found += _annotations_over_labels(ax, name, axes, renderer)
    return found


def _overlap(a, b):
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > _SLACK
            and min(a.y1, b.y1) - max(a.y0, b.y0) > _SLACK)


def _labels_over_other_panels(ax, name, axes, renderer):
    found = []
    texts = [("x label", ax.xaxis.label), ("y label", ax.yaxis.label),
             ("title", ax.title)]
    for other in axes:
        if other is ax or other.get_position().bounds == (
                ax.get_position().bounds):  # a twin shares the area
            continue
        area = other.get_window_extent(renderer)
        ticks = [t.get_window_extent(renderer)
                 for t in other.get_xticklabels() + other.get_yticklabels()
                 if t.get_visible() and t.get_text()]
        for what, text in texts:
            if not text.get_visible() or not text.get_text():
                continue
            box = text.get_window_extent(renderer)
            if _overlap(box, area) or any(_overlap(box, t) for t in ticks):
                found.append(f"{name}: its {what} {text.get_text()!r} "
                             "overlaps another panel")
    return found


def _annotations_over_labels(ax, name, axes, renderer):
    """Texts drawn in a panel must not sit on tick labels, axis labels or
    each other."""
    labels = []
    for other in axes:
        labels += [t for t in other.get_xticklabels() + other.get_yticklabels()
                   if t.get_visible() and t.get_text()]
        labels += [t for t in (other.xaxis.label, other.yaxis.label)
                   if t.get_visible() and t.get_text()]
    texts = [t for t in ax.texts if t.get_visible() and t.get_text().strip()]
    found = []
    for i, text in enumerate(texts):
        box = text.get_window_extent(renderer)
        for label in labels + texts[i + 1:]:
            if _overlap(box, label.get_window_extent(renderer)):
                found.append(f"{name}: the text {text.get_text()!r} sits on "
                             f"{label.get_text()!r}")
                break
    return found


def _legend_over_data(ax, name, renderer):
    legend = ax.get_legend()
    if legend is None or not legend.get_visible():
        return []
    box = legend.get_window_extent(renderer)
    found = []
    for bars in ax.containers:
        if not isinstance(bars, container.BarContainer):
            continue
        for rect in bars.patches:
            if rect.get_height() and _overlap(
                    box, rect.get_window_extent(renderer)):
                found.append(f"{name}: the legend covers a bar "
                             f"({bars.get_label()!r})")
                break
    points = [_along(line.get_transform().transform(line.get_xydata()))
              for line in ax.lines if line.get_visible()
              and len(line.get_xydata())]
    points += [c.get_offset_transform().transform(c.get_offsets())
               for c in ax.collections if len(c.get_offsets())]
    for xy in points:
        xy = np.asarray(xy)
        inside = ((xy[:, 0] > box.x0) & (xy[:, 0] < box.x1)
                  & (xy[:, 1] > box.y0) & (xy[:, 1] < box.y1))
        if inside.any():
            found.append(f"{name}: the legend covers plotted data")
            break
    return found


def _along(xy, per_segment=16):
    """Points along a polyline (display coordinates): its segments count,
    not only its vertices."""
    xy = np.asarray(xy, "float64")
    xy = xy[np.all(np.isfinite(xy), axis=1)]
    if len(xy) < 2:
        return xy
    t = np.linspace(0.0, 1.0, per_segment)[:, None, None]
    return (xy[:-1] + t * (xy[1:] - xy[:-1])).reshape(-1, 2)


def _invisible_bars(ax, name):
    bottom = min(ax.get_ylim())
    log = ax.get_yscale() == "log"
    labelled = [t.get_position()[0] for t in ax.texts
                if t.get_visible() and t.get_text().strip()]
    found = []
    for bars in ax.containers:
        if not isinstance(bars, container.BarContainer):
            continue
        for rect in bars.patches:
            top = rect.get_y() + rect.get_height()
            if rect.get_height() != 0 and not (log and top <= bottom):
                continue
            left, right = rect.get_x(), rect.get_x() + rect.get_width()
            if not any(left <= x <= right for x in labelled):
                found.append(
                    f"{name}: the bar at x={(left + right) / 2:g} "
                    f"({bars.get_label()!r}) cannot be seen (zero height) "
                    "and no label says so")
    return found


def install():
    """Checks every figure printed (saved or shown) from now on."""
    original = backend_bases.FigureCanvasBase.print_figure
    if getattr(original, "checks_figures", False):
        return

    def print_figure(self, *args, **kwargs):
        figure = self.figure
        titles = [t.get_text() for t in [figure._suptitle] + [
            a.title for a in figure.axes] if t is not None and t.get_text()]
        label = f"figure {titles[0]!r}" if titles else "a figure"
        FOUND.extend(f"{label}: {p}" for p in problems(figure))
        return original(self, *args, **kwargs)

    print_figure.checks_figures = True
    backend_bases.FigureCanvasBase.print_figure = print_figure
