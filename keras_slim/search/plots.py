"""Figures of a search result: channels per layer, accuracy against MACs."""

import os

from keras_slim.search import configs as configs_lib


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


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
    plt = _pyplot()
    result = _result(result)
    configs = result["configs"]
    if not configs:
        raise ValueError("The search result has no configuration to plot.")
    layers = list(configs[0]["channels"])
    figure, axes = plt.subplots(
        len(configs), 1, figsize=(max(6, 0.25 * len(layers)),
                                  2.6 * len(configs)), squeeze=False)
    for axis, config in zip(axes[:, 0], configs):
        width = config["uniform"]["width"]
        uniform = configs_lib.config_from_counts(
            model, model.channels_for(width))
        positions = range(len(layers))
        # Three significant digits: small networks' MACs differ in the
        # second decimal of a million.
        axis.bar([p - 0.2 for p in positions],
                 [config["channels"][n] for n in layers], 0.4,
                 label=f"searched ({config['macs'] / 1e6:.3g}M MACs)")
        axis.bar([p + 0.2 for p in positions], [uniform[n] for n in layers],
                 0.4, label=f"uniform {width:.3g}x "
                 f"({config['uniform']['macs'] / 1e6:.3g}M MACs)")
        axis.set_title(config["name"])
        axis.set_ylabel("channels")
        axis.legend(fontsize=8)
        axis.set_xticks(list(positions))
        axis.set_xticklabels(layers, rotation=90, fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


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
    plt = _pyplot()
    result = _result(result)
    configs = result["configs"]
    figure, axis = plt.subplots(figsize=(6, 4))
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
    plt.close(figure)
