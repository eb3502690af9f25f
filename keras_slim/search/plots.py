"""Figures of a search result: channels per layer, accuracy against MACs."""

import os

from keras_slim.search import configs as configs_lib


def _figure(**kwargs):
    """A figure that only saves to files.

    A `matplotlib.figure.Figure` made directly needs no pyplot backend:
    switching the global backend to "Agg" here (as this module once did)
    silently stopped every later `plt.show()` of a notebook from drawing.
    """
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _macs(macs):
    """MACs with 3 significant digits: "433K", "1.25M" (".1fM" printed
    0.4M for both 433K and 452K)."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if macs >= scale:
            return f"{macs / scale:.3g}{unit}"
    return f"{macs:.0f}"


def _result(result):
    if isinstance(result, (str, os.PathLike)):
        return configs_lib.read_results(result)
    return result


def plot_channels(result, model, path):
    """Channels per layer of each configuration vs uniform width, one panel
    per configuration, saved to `path` (PNG).

    Args:
        result: An `autoslim` result dict or the path of its JSON file.
        model: The searched `SlimmableModel` (for the uniform widths'
            channels and the layer order).
        path: Output image file.

    Example:

    >>> keras_slim.search.plots.plot_channels("search.json", model,
    ...                                       "channels.png")
    """
    result = _result(result)
    configs = result["configs"]
    if not configs:
        raise ValueError("The search result has no configuration to plot.")
    layers = list(configs[0]["channels"])
    figure = _figure(figsize=(max(6, 0.25 * len(layers)),
                              2.6 * len(configs) + 0.4))
    axes = figure.subplots(len(configs), 1, squeeze=False)
    for axis, config in zip(axes[:, 0], configs):
        width = config["uniform"]["width"]
        uniform = configs_lib.config_from_counts(
            model, model.channels_for(width))
        positions = range(len(layers))
        # Three significant digits: small networks' MACs differ in the
        # second decimal of a million.
        axis.bar([p - 0.2 for p in positions],
                 [config["channels"][n] for n in layers], 0.4,
                 label=f"searched: {_macs(config['macs'])} MACs")
        # The uniform width of equal cost is rarely round (e.g. 1.0416):
        # 3 significant digits say it.
        axis.bar([p + 0.2 for p in positions], [uniform[n] for n in layers],
                 0.4, label=f"uniform {width:.3g}x: "
                 f"{_macs(config['uniform']['macs'])} MACs")
        target = config.get("target")
        axis.set_title(config["name"] + (
            f" (target {_macs(target)} MACs)" if target else ""), fontsize=10)
        axis.set_ylabel("channels")
        axis.set_xticks(list(positions))
        axis.set_xticklabels(layers, rotation=90, fontsize=6)
        # Room above the bars for the legend, which must not cover them.
        top = max(max(config["channels"][n] for n in layers),
                  max(uniform[n] for n in layers))
        axis.set_ylim(0, 1.35 * top)
        axis.legend(fontsize=8, ncol=2, loc="upper center", frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_accuracy(result, path, retrained=None):
    """Accuracy vs MACs of the searched and uniform networks (PNG).

    Args:
        result: An `autoslim` result dict or the path of its JSON file.
        path: Output image file.
        retrained: Optional dict with "searched" and "uniform" lists of
            `(macs, accuracy)` after training from scratch, drawn next to
            the search-set accuracies of the supernet.

    Example:

    >>> keras_slim.search.plots.plot_accuracy("search.json", "acc.png")
    """
    result = _result(result)
    configs = result["configs"]
    figure = _figure(figsize=(6, 4))
    axis = figure.subplots()
    axis.plot([c["macs"] / 1e6 for c in configs],
              [c["search_accuracy"] for c in configs], "o-",
              label="searched (supernet, search set)")
    axis.plot([c["uniform"]["macs"] / 1e6 for c in configs],
              [c["uniform"]["search_accuracy"] for c in configs], "s--",
              label="uniform (supernet, search set)")
    for key, marker in (("searched", "o-"), ("uniform", "s--")):
        points = sorted((retrained or {}).get(key, []))
        if points:
            axis.plot([m / 1e6 for m, _ in points], [a for _, a in points],
                      marker, label=f"{key}, retrained")
    axis.set_xlabel("MACs (millions)")
    axis.set_ylabel("accuracy")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
