"""MACs and parameters of a channel configuration, without stripping.

A greedy search prices thousands of candidates; `keras_slim.profile`
strips and traces a model for each (about a second for MobileNetV2).
`CostModel` instead learns, once, how every layer's input and output
channel counts depend on the channel groups (by running the network on one
zero image with each group narrowed in turn: counts are sums of group
counts, so the dependence is exactly linear), and then prices a
configuration in well under a millisecond with the
counting convention of `keras_slim.profile` (conv / dense MACs; kernel,
bias and BN weights as parameters). Tests check both agree.
"""

import hashlib

import keras
import numpy as np
import tensorflow as tf

from keras_slim import profiling
from keras_slim.layers import scope as aw
from keras_slim.search.program import Program

_KERNEL_TYPES = (
    keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
    keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D, keras.layers.SeparableConv2D,
    keras.layers.Dense,
)


def _channels(tensor):
    return int(tensor.shape[-1]) if len(tensor.shape) > 1 else 1


class CostModel:
    """Prices channel configurations of a `SlimmableModel` by formula.

    Args:
        model: A `keras_slim.SlimmableModel` with a fixed input size.
        program: Optional `Program` of the model (shared with the runner).

    Attributes:
        cuts: dict group -> index of the first call whose output changes
            when that group (or a group derived from it) narrows.
        layers: Per priced call: name, type, positions, full in / out.

    Example:

    >>> costs = CostModel(model)
    >>> costs.cost(model.channels_for(0.5))["macs"]
    """

    def __init__(self, model, program=None):
        self.model = model
        self.program = program or Program(model)
        input_shape = tuple(model.network.inputs[0].shape[1:])
        if any(d is None for d in input_shape):
            raise ValueError(
                "keras_slim.search needs a fixed input size; the network's "
                f"input shape is {input_shape}. Build it with "
                "keras.Input(shape=(H, W, C))."
            )
        self._input = tf.zeros((1,) + input_shape, model.network.inputs[0].dtype)
        plan = model.channel_plan
        full = np.asarray(model.full_channels, "int64")
        base_in, base_out, base_shapes = self._probe(full)
        slopes_in = np.zeros((len(base_in), len(full)))
        slopes_out = np.zeros((len(base_out), len(full)))
        first_change = {}
        for j, group in enumerate(model.channel_groups):
            probe = full.copy()
            probe[j] = plan.minimums[j] if plan.minimums[j] < full[j] else (
                full[j] - 1)
            if probe[j] < 1:
                continue  # a one-channel group cannot change
            ins, outs, shapes = self._probe(probe)
            slopes_in[:, j] = (ins - base_in) / (probe[j] - full[j])
            slopes_out[:, j] = (outs - base_out) / (probe[j] - full[j])
            changed = [i for i, (a, b) in enumerate(zip(shapes, base_shapes))
                       if a != b]
            if changed:
                first_change[group] = changed[0]
        self._full = full
        self._base_in, self._base_out = base_in, base_out
        self._slopes_in, self._slopes_out = slopes_in, slopes_out
        # A group moves its derived groups: its cut is the earliest of all.
        self.cuts = {}
        for group in plan.independent_groups:
            family = [group] + self._descendants(group)
            points = [first_change[g] for g in family if g in first_change]
            if points:
                self.cuts[group] = min(points)
        self._build_rows()

    def _descendants(self, group):
        plan = self.model.channel_plan
        found = []
        for child, (parent, _, _) in plan.derived.items():
            if parent == group:
                found += [child] + self._descendants(child)
        return found

    def _probe(self, counts):
        """Per call: input channels, output channels, output shapes."""
        state = aw.ActiveWidth(
            dict(zip(self.model.channel_groups, (int(c) for c in counts))),
            self.model.width_index(self.model.width_range[1]),
            update_moving_stats=False,
        )
        program = self.program
        values = {program.input_id: self._input}
        ins, outs, shapes = [], [], []
        keep = set()
        for call in program.calls:
            keep.update(id(t) for t in call.inputs)
        keep.add(program.output_id)
        values = program.run(0, program.cut_size, values, state, keep=keep)
        values[program.input_id] = self._input
        for call in program.calls:
            ins.append(
                _channels(values[id(call.inputs[0])]) if call.inputs else 0
            )
            outputs = [values.get(id(t)) for t in call.outputs]
            outs.append(_channels(outputs[0]) if outputs[0] is not None else 0)
            shapes.append(tuple(
                tuple(o.shape) if o is not None else None for o in outputs
            ))
        return np.asarray(ins, "float64"), np.asarray(outs, "float64"), shapes

    def _build_rows(self):
        """Which calls carry MACs / parameters, and their fixed factors."""
        self.layers = []
        counted = set()
        for index, call in enumerate(self.program.calls):
            layer = call.layer
            if not isinstance(layer, keras.layers.Layer):
                continue
            first = id(layer) not in counted
            counted.add(id(layer))
            out_shape = call.outputs[0].shape
            positions = int(np.prod(out_shape[1:-1])) if len(out_shape) > 2 else 1
            row = {"index": index, "name": layer.name,
                   "type": type(layer).__name__, "positions": positions,
                   "count_params": first, "full_in": self._base_in[index],
                   "full_out": self._base_out[index], "kind": None}
            if isinstance(layer, _KERNEL_TYPES):
                if isinstance(layer, (keras.layers.SeparableConv1D,
                                      keras.layers.SeparableConv2D)):
                    row["kind"] = "separable"
                    shape = layer.depthwise_kernel.shape
                elif isinstance(layer, (keras.layers.DepthwiseConv1D,
                                        keras.layers.DepthwiseConv2D)):
                    row["kind"] = "depthwise"
                    shape = layer.kernel.shape
                else:
                    row["kind"] = "kernel"
                    shape = layer.kernel.shape
                    groups = int(getattr(layer, "groups", 1) or 1)
                    # A grouped kernel's input side is per group: it stays.
                    row["in_per_group"] = int(shape[-2]) if groups > 1 else None
                # Every kernel is (*window, in, out or depth multiplier).
                row["window"] = int(np.prod(shape[:-2]))
                if row["kind"] != "kernel":
                    row["multiplier"] = int(shape[-1])
                row["bias"] = bool(getattr(layer, "use_bias", False))
                row["full_params"] = int(layer.count_params())
            elif isinstance(layer, keras.layers.BatchNormalization):
                row["kind"] = "bn"
                row["per_channel"] = 2 + int(layer.center) + int(layer.scale)
            elif layer.weights:
                row["kind"] = "fixed_or_channelwise"
                row["full_params"] = int(layer.count_params())
            if row["kind"] is not None:
                self.layers.append(row)

    # -------------------------------------------------------------- pricing
    def io_channels(self, counts):
        """Per call: (input channels, output channels) at group `counts`."""
        delta = np.asarray(counts, "float64") - self._full
        ins = np.rint(self._base_in + self._slopes_in @ delta)
        outs = np.rint(self._base_out + self._slopes_out @ delta)
        return ins, outs

    def layer_costs(self, counts):
        """Per priced call: `(row, macs, params)`."""
        ins, outs = self.io_channels(counts)
        result = []
        for row in self.layers:
            i, o = ins[row["index"]], outs[row["index"]]
            macs, params = 0.0, 0.0
            if row["kind"] in ("separable", "depthwise", "kernel"):
                fan_in = row.get("in_per_group") or i
                multiplier = row.get("multiplier", 1)
                macs = profiling.kernel_macs(
                    row["kind"], row["window"], fan_in, o, row["positions"],
                    multiplier)
                # A kernel holds the weights of one output position.
                params = profiling.kernel_macs(
                    row["kind"], row["window"], fan_in, o, 1, multiplier
                ) + (o if row["bias"] else 0)
            elif row["kind"] == "bn":
                params = row["per_channel"] * o
            else:
                # Other weighted layers: per-channel weights scale with the
                # channels, others are fixed.
                full = max(row["full_out"], 1)
                params = row["full_params"] * (
                    o / full if o != full else 1.0)
            if not row["count_params"]:
                params = 0.0
            result.append((row, macs, params))
        return result

    def cost(self, counts):
        """`{"macs", "params"}` of the network at group `counts`.

        Example:

        >>> CostModel(model).cost(model.full_channels)
        {'macs': 196108032, 'params': 3500000}
        """
        macs = params = 0.0
        for _, layer_macs, layer_params in self.layer_costs(counts):
            macs += layer_macs
            params += layer_params
        return {"macs": int(round(macs)), "params": int(round(params))}


def fingerprint(model, program=None):
    """A short hash of the architecture: layers, shapes and channel groups.

    Two models with the same fingerprint have the same layers at the same
    full channel counts and input size, so a per-layer latency table
    measured on one holds for the other (weights do not matter).

    Example:

    >>> fingerprint(model)
    'a41c09e2b7d3'
    """
    program = program or Program(model)
    parts = [repr(tuple(model.network.inputs[0].shape[1:]))]
    for call in program.calls:
        parts.append("{}:{}:{}".format(
            type(call.layer).__name__, getattr(call.layer, "name", ""),
            [tuple(t.shape[1:]) for t in call.outputs],
        ))
    parts.append(repr(list(zip(model.channel_groups, model.full_channels))))
    text = "|".join(parts)
    return hashlib.sha1(text.encode()).hexdigest()[:12]
