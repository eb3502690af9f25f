"""Channel-configuration search (AutoSlim) for slimmable networks.

`autoslim` greedily narrows a trained supernet, one bin of one channel group
at a time, and records a per-layer channel configuration for each resource
target (MACs, parameters or latency predicted by a per-layer table from
`latency_table`). `load_configs` reads them back as dicts layer name ->
channels, which `set_width`, `calibrate_bn`, `strip`, `profile` and the
exporters accept. `CostModel` predicts the MACs and parameters of a
configuration without running the network; `plots` draws the result.

Example:

>>> result = keras_slim.search.autoslim(
...     supernet, (x_search, y_search), targets=[60e6, 40e6],
...     output_path="search.json")
>>> configs = keras_slim.search.load_configs("search.json")
>>> keras_slim.export.to_tflite(supernet, "out",
...                             widths=[configs["macs_40M"]])
>>> keras_slim.search.plots.plot_channels(result, supernet, "channels.png")
"""

from keras_slim.search.greedy import autoslim
from keras_slim.search.configs import Configuration
from keras_slim.search.configs import config_from_counts
from keras_slim.search.configs import load_configs
from keras_slim.search.cost import CostModel
from keras_slim.search.latency import LatencyTable
from keras_slim.search.latency import latency_table
from keras_slim.search import plots

__all__ = [
    "Configuration",
    "CostModel",
    "LatencyTable",
    "autoslim",
    "config_from_counts",
    "latency_table",
    "load_configs",
    "plots",
]
