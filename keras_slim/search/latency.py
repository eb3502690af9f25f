"""A per-layer latency table: measured once, then predicts any configuration.

As Once-for-All does for its latency targets: every convolution / dense
layer of the network is converted alone to TFLite at a few channel levels
(its input and output counts scaled together) and timed with the LiteRT
interpreter. A configuration's latency is predicted as the sum, over
layers, of the layer's latency interpolated in its MACs between the
measured levels (less the interpreter's fixed cost per invocation, timed on
a trivial model), scaled, plus a constant for everything else (activations,
BN folded away by the converter, pooling, that fixed cost once). Scale and
constant are fitted on the whole network at the minimum and full widths, so
both are predicted exactly: a layer timed alone runs with other caches and
per-op costs than inside the network, and a constant alone left the
prediction of narrow networks 20-50% too high on this machine. Tables are JSON, so one can
be measured on a phone and loaded here; each records the model's
fingerprint (`keras_slim.search.cost.fingerprint`) and a table of another model
is refused.
"""

import json
import os
import time

import keras
import numpy as np

from keras_slim.export import runtimes
from keras_slim.search.cost import CostModel
from keras_slim.search.cost import fingerprint

FORMAT = "keras_slim.latency_table/1"


def _time_interpreter(content, num_runs, warmup, num_threads):
    interpreter = runtimes.litert_interpreter(content, num_threads=num_threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    rng = np.random.default_rng(0)
    interpreter.set_tensor(
        detail["index"],
        rng.standard_normal(detail["shape"]).astype(detail["dtype"]),
    )
    for _ in range(warmup):
        interpreter.invoke()
    runs = []
    for _ in range(num_runs):
        start = time.perf_counter()
        interpreter.invoke()
        runs.append((time.perf_counter() - start) * 1e3)
    return float(np.median(runs))


def _single_layer(row, layer, in_shape, in_channels, out_channels):
    """A stock Keras model holding one layer of the network, resized."""
    inputs = keras.Input(shape=tuple(in_shape[1:-1]) + (int(in_channels),),
                         batch_size=1)
    config = layer.get_config()
    common = {k: config[k] for k in ("strides", "padding", "dilation_rate",
                                     "use_bias") if k in config}
    if row["kind"] == "depthwise":
        outputs = keras.layers.DepthwiseConv2D(
            config["kernel_size"], depth_multiplier=row["multiplier"],
            **common)(inputs)
    elif row["kind"] == "separable":
        outputs = keras.layers.SeparableConv2D(
            int(out_channels), config["kernel_size"],
            depth_multiplier=row["multiplier"], **common)(inputs)
    elif isinstance(layer, keras.layers.Dense):
        outputs = keras.layers.Dense(
            int(out_channels), use_bias=config["use_bias"])(inputs)
    else:
        groups = int(config.get("groups", 1) or 1)
        if groups > 1:
            groups = max(1, int(in_channels) // row["in_per_group"])
        conv = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D,
                3: keras.layers.Conv3D}[len(in_shape) - 2]
        outputs = conv(int(out_channels), config["kernel_size"],
                       groups=groups, **common)(inputs)
    return keras.Model(inputs, outputs)


def _convert(model):
    from keras_slim.export.converters import convert_keras_model

    return convert_keras_model(model)


class LatencyTable:
    """Measured per-layer latencies of one architecture (milliseconds).

    Build with `latency_table`; save with `save`, read with `load`.

    Attributes:
        fingerprint: The architecture the table was measured on.
        layers: dict layer name -> list of `[macs, milliseconds]`, sorted.
        overhead_ms: Latency not attributed to any layer.
        scale: Factor from the sum of single-layer latencies to their share
            in the whole network.
        device: Free text saying where it was measured.

    Example:

    >>> table = keras_slim.search.latency_table(model, path="latency.json")
    >>> table.predict_config(model, configs["macs_40M"])
    """

    def __init__(self, fingerprint, layers, overhead_ms=0.0, device="",
                 num_threads=1, checks=None, scale=1.0):
        self.fingerprint = str(fingerprint)
        self.layers = {
            str(k): sorted([float(m), float(t)] for m, t in v)
            for k, v in layers.items()
        }
        self.overhead_ms = float(overhead_ms)
        self.scale = float(scale)
        self.device = str(device)
        self.num_threads = int(num_threads)
        self.checks = list(checks or [])

    def check(self, model, program=None):
        """Raises if the table was measured on another architecture."""
        found = fingerprint(model, program)
        if found != self.fingerprint:
            raise ValueError(
                "This latency table was measured on another model "
                f"(fingerprint {self.fingerprint}; this model's is {found}): "
                "layers, channel counts or input size differ. Measure one "
                "for this model with keras_slim.search.latency_table(model)."
            )

    def layer_latency(self, name, macs):
        points = np.asarray(self.layers[name])
        if len(points) == 1 or points[0, 0] == points[-1, 0]:
            return float(points[-1, 1] * (macs / max(points[-1, 0], 1)))
        if macs < points[0, 0]:
            # Below the smallest level: linear towards the first segment.
            (m0, t0), (m1, t1) = points[0], points[1]
            return float(max(0.0, t0 + (macs - m0) * (t1 - t0) / (m1 - m0)))
        return float(np.interp(macs, points[:, 0], points[:, 1]))

    def predict(self, costs, counts):
        """Predicted milliseconds of group `counts` (`costs`: CostModel)."""
        return float(self.overhead_ms + self.scale * self._layer_sum(
            costs, counts))

    def _layer_sum(self, costs, counts):
        total = 0.0
        for row, macs, _ in costs.layer_costs(counts):
            if row["name"] in self.layers and macs > 0:
                total += self.layer_latency(row["name"], macs)
        return total

    def predict_config(self, model, width):
        """Predicted milliseconds of a width or configuration of `model`."""
        costs = CostModel(model)
        self.check(model, costs.program)
        return self.predict(costs, model.channels_for(width))

    def to_json(self):
        return {
            "format": FORMAT, "fingerprint": self.fingerprint,
            "device": self.device, "num_threads": self.num_threads,
            "overhead_ms": self.overhead_ms, "scale": self.scale,
            "layers": self.layers,
            "checks": self.checks,
        }

    def save(self, path):
        """Writes the table as JSON."""
        with open(os.fspath(path), "w") as f:
            json.dump(self.to_json(), f, indent=1)

    @classmethod
    def load(cls, path):
        """Reads a table written by `save` (or measured elsewhere)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"No latency table at '{path}'.")
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(
                f"'{path}' is not a latency table (expected format "
                f"'{FORMAT}')."
            )
        return cls(data["fingerprint"], data["layers"],
                   data.get("overhead_ms", 0.0), data.get("device", ""),
                   data.get("num_threads", 1), data.get("checks"),
                   data.get("scale", 1.0))


def fit_whole_network(layer_sums, measured):
    """`(scale, overhead)` with measured = overhead + scale * layer sum.

    Exact through the two points (min and max width) when the whole
    network is slower at the larger one; otherwise (timings too noisy to
    tell them apart) the scale stays 1 and the constant is the mean gap.
    """
    (s0, s1), (w0, w1) = layer_sums, measured
    scale = (w1 - w0) / (s1 - s0) if s1 > s0 and w1 > w0 else 1.0
    overhead = float(np.mean([w0 - scale * s0, w1 - scale * s1]))
    return float(scale), overhead


def latency_table(model, path=None, levels=3, num_runs=30, warmup=3,
                  num_threads=1, device="local LiteRT interpreter",
                  verbose=1):
    """Measures (or loads) the per-layer latency table of `model`.

    With `path` naming an existing file, loads it and checks it belongs to
    `model`; otherwise measures every convolution / dense layer alone at
    `levels` channel levels (widths evenly spaced over the model's range,
    input and output counts as that width gives them) with the LiteRT
    interpreter, fits the constant for the rest on the whole network at
    its min and max widths, and saves the table to `path` if given.
    Identical layer shapes are measured once.

    Args:
        model: A `keras_slim.SlimmableModel` with a fixed input size.
        path: JSON file to load from, or to save to after measuring.
        levels: Channel levels per layer (>= 2).
        num_runs, warmup: Timed and untimed invocations per measurement
            (the median is kept).
        num_threads: Interpreter threads.
        device: Free text recorded in the table.
        verbose: 0 = silent, 1 = a Keras progress bar.

    Returns:
        A `LatencyTable`.

    Raises:
        ValueError: for a table of another model, or levels < 2.

    Example:

    >>> table = keras_slim.search.latency_table(model, "latency.json")
    >>> keras_slim.search.autoslim(model, data, targets=[2.0, 1.5],
    ...                            metric="latency", latency_table=table)
    """
    if path is not None and os.path.isfile(os.fspath(path)):
        table = LatencyTable.load(path)
        table.check(model)
        return table
    if int(levels) < 2:
        raise ValueError(f"levels must be >= 2; got {levels}.")
    from keras_slim.export.latency import profile_latency

    costs = CostModel(model)
    low, high = model.width_range
    widths = np.linspace(low, high, int(levels))
    plan = model.channel_plan
    rows = [r for r in costs.layers
            if r["kind"] in ("kernel", "depthwise", "separable")]
    progress = keras.utils.Progbar(len(rows) * len(widths), verbose=verbose,
                                   unit_name="measurement")
    # Every single-layer file also pays the interpreter's fixed cost per
    # invocation, which the whole network pays once: measure it on a
    # trivial model and take it off each layer.
    trivial_input = keras.Input(shape=(1, 1, 8), batch_size=1)
    trivial = keras.Model(trivial_input, keras.layers.ReLU()(trivial_input))
    invoke_ms = _time_interpreter(_convert(trivial), int(num_runs),
                                  int(warmup), int(num_threads))
    measured, layers = {}, {}
    for width in widths:
        counts = plan.counts(float(width)).tolist()
        ins, outs = costs.io_channels(counts)
        macs_of = {row["index"]: macs for row, macs, _ in
                   costs.layer_costs(counts)}
        for row in rows:
            call = costs.program.calls[row["index"]]
            i, o = int(ins[row["index"]]), int(outs[row["index"]])
            in_shape = tuple(call.inputs[0].shape)
            layer = call.layer
            key = (row["type"], row["kind"], in_shape[1:-1], i, o,
                   json.dumps(layer.get_config().get("kernel_size")),
                   json.dumps(layer.get_config().get("strides")))
            if key not in measured:
                single = _single_layer(row, layer, in_shape, i, o)
                measured[key] = max(0.0, _time_interpreter(
                    _convert(single), int(num_runs), int(warmup),
                    int(num_threads)) - invoke_ms)
            layers.setdefault(row["name"], []).append(
                [macs_of[row["index"]], measured[key]])
            progress.add(1)
    table = LatencyTable(fingerprint(model, costs.program), layers, 0.0,
                         device, num_threads)
    # Scale and constant (the rest of the network and the interpreter's
    # fixed cost): whole = overhead + scale * layer sum, exact at the min
    # and max widths.
    sums, wholes, checks = [], [], []
    for width in (low, high):
        whole = profile_latency(model, width=width, num_runs=int(num_runs),
                                warmup=int(warmup),
                                num_threads=int(num_threads))["median_ms"]
        sums.append(table._layer_sum(costs, plan.counts(width).tolist()))
        wholes.append(whole)
        checks.append({"width": float(width), "measured_ms": whole})
    table.scale, table.overhead_ms = fit_whole_network(sums, wholes)
    table.checks = checks
    if path is not None:
        table.save(path)
    return table
