"""The search result figures: readable, and no side effect on matplotlib.

(The search itself is tested in tests/test_search.py.)
"""

import keras
import matplotlib
import pytest
from matplotlib import figure as figure_lib

import keras_slim
from keras_slim import search
from keras_slim.search import configs as configs_lib
from tests import figure_checks


@pytest.fixture(scope="module")
def model():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="classifier")(x)
    return keras_slim.slim(keras.Model(inputs, outputs),
                           width_range=(0.25, 1.5), divisor=4)


def fake_result(model):
    """Three configurations whose MACs differ by less than 0.1M from their
    uniform widths' (as on digits), with uneven uniform widths."""
    configs = []
    for macs, uniform_macs, width, name in (
            (433_472, 452_064, 1.0416666, "macs_452.1K"),
            (248_992, 256_104, 0.7083333, "macs_256.1K"),
            (110_752, 115_440, 0.4583333, "macs_115.4K")):
        channels = configs_lib.config_from_counts(
            model, model.channels_for(width))
        channels = {k: max(4, v - 4) for k, v in channels.items()}
        configs.append({
            "name": name, "channels": channels, "macs": macs,
            "target": uniform_macs, "search_accuracy": 0.9,
            "uniform": {"width": width, "macs": uniform_macs,
                        "search_accuracy": 0.85}})
    return {"configs": configs}


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save, kept for inspection."""
    figures = []
    save = figure_lib.Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(figure_lib.Figure, "savefig", keep)
    return figures


def test_plots_leave_the_pyplot_backend_alone(model, tmp_path):
    # The module once switched the global backend to "Agg": every later
    # plt.show() of a notebook then drew nothing.
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        search.plots.plot_channels(fake_result(model), model,
                                   tmp_path / "channels.png")
        search.plots.plot_accuracy(fake_result(model),
                                   tmp_path / "accuracy.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    for name in ("channels.png", "accuracy.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_channel_plot_labels_tell_the_bars_apart(model, tmp_path, drawn):
    search.plots.plot_channels(fake_result(model), model,
                               tmp_path / "channels.png")
    (figure,) = drawn
    assert figure_checks.problems(figure) == []  # no legend over the bars
    labels = [[t.get_text() for t in axis.get_legend().get_texts()]
              for axis in figure.axes]
    # Was ["searched (0.4M MACs)", "uniform 1.041667x (0.5M MACs)"]: the
    # same rounded MACs for both bars, a width with 7 digits.
    assert labels[0] == ["searched: 433K MACs", "uniform 1.04x: 452K MACs"]
    assert labels[2] == ["searched: 111K MACs", "uniform 0.458x: 115K MACs"]
