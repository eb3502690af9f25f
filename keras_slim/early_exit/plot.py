"""The budget-curve figure: accuracy vs expected MACs per image."""

import numpy as np

from keras_slim.early_exit.budget import ExitPolicy


def _points(values):
    points = []
    for value in values:
        if isinstance(value, ExitPolicy):
            points.append((value.expected_macs, value.accuracy))
        elif isinstance(value, dict):
            points.append((value.get("expected_macs", value.get("macs")),
                           value["accuracy"]))
        else:
            macs, accuracy = value
            points.append((macs, accuracy))
    points = [(float(m), float(a)) for m, a in points if a is not None]
    return sorted(points)


def plot_budget_curve(path, curves, anytime=None, title=None, ax=None,
                      anytime_colors=None):
    """Draws accuracy (%) vs expected MACs per image (millions) to a PNG.

    Args:
        path: Output PNG path (None: only draw on `ax`).
        curves: dict label -> points, drawn as lines. A point is an
            `ExitPolicy`, a dict with "expected_macs" (or "macs") and
            "accuracy", or a `(macs, accuracy)` pair; accuracies in [0, 1].
        anytime: Optional dict label -> points drawn as markers (e.g. the
            per-exit accuracies of `anytime_accuracy`).
        title: Figure title.
        ax: Draw on this matplotlib axis instead of a new figure.
        anytime_colors: Colors of the `anytime` markers (default: those of
            the curves, in order, so a model's markers match its curve).

    Returns:
        The matplotlib axis.

    Example:

    >>> curve = keras_slim.calibrate_exit_thresholds(model, (x_val, y_val))
    >>> keras_slim.early_exit.plot_budget_curve(
    ...     "budget.png", {"boosted": curve},
    ...     anytime={"boosted exits": anytime_accuracy(cache)})
    """
    # A Figure of its own, not pyplot's: switching matplotlib's backend to
    # Agg would silently blank every later plt.show() of a notebook.
    from matplotlib.figure import Figure

    figure = None
    if ax is None:
        figure = Figure(figsize=(7, 4.5))
        ax = figure.subplots()
    for label, values in curves.items():
        points = np.asarray(_points(values))
        if len(points):
            ax.plot(points[:, 0] / 1e6, 100 * points[:, 1], "-", label=label,
                    linewidth=1.5)
    markers = iter("osD^v<>ph*")
    colors = iter(anytime_colors or [f"C{i}" for i in range(10)])
    for label, values in (anytime or {}).items():
        points = np.asarray(_points(values))
        color = next(colors)
        if len(points):
            ax.plot(points[:, 0] / 1e6, 100 * points[:, 1], next(markers),
                    color=color, label=label, markersize=6,
                    fillstyle="none")
    ax.set_xlabel("expected MACs per image (millions)")
    ax.set_ylabel("accuracy (%)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if figure is not None:
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, dpi=120)
    return ax
