"""A drop whose loss the next layer takes over, as far as it can.

RePr ranks filters by how much they overlap with the other filters of
their layer, so a dropped filter's output is, by design, largely
predictable from the outputs that stay. Zeroing it anyway throws that
away: the paper's ConvNet (CIFAR-10, 10k images, 4 epochs, hold-out 0.49)
falls to 0.12 right after a 30% drop. Refitting the layer that reads the
dropped channels keeps most of it: each dropped channel, as the next
layer sees it, is regressed (least squares, a small ridge) on the kept
channels and a constant over calibration images, and the coefficients are
folded into the next layer's weights for the kept channels and its bias.
Measured on the same model: 0.42 right after the drop (0.17 with the
channel means alone). Opt-in (`compensate_drop=True`): over whole runs it
did not improve the final accuracy (see the README's RePr section).

Only the next layer's weights change; the dropped filters are held out
exactly as without compensation, and their own outgoing weights are left
alone, as in the paper. Works where one chain of channel-wise layers
(activations, pooling, dropout, BatchNormalization, padding, Flatten)
leads from the convolution to one `Conv1D/2D/3D` (groups 1) or `Dense`;
other layers (e.g. a convolution whose output joins a residual sum) are
dropped without compensation and `find_consumer` says why.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_slim import graph as graph_lib

# Layers that keep channels apart (last axis in, last axis out), so the
# channels the next layer reads are the convolution's channels.
_CHANNELWISE = (
    keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
    keras.layers.ELU, keras.layers.PReLU, keras.layers.Dropout,
    keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D, keras.layers.BatchNormalization,
    keras.layers.MaxPooling1D, keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D, keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D, keras.layers.AveragePooling3D,
    keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D, keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D, keras.layers.GlobalMaxPooling3D,
    keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
)
_CONSUMERS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
              keras.layers.Dense)

# Rows (positions x images) of the regression, at most: enough for a
# well-determined fit of a few hundred channels, seconds of numpy.
MAX_ROWS = 100_000
# Ridge, relative to the mean diagonal of the normal equations.
RIDGE = 1e-3


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") in (
        None, "channels_last")


class Consumer:
    """The layer that reads a convolution's channels, and how to refit it.

    Attributes:
        layer: The `Conv*` or `Dense` layer that reads the channels.
        feed: Its input tensor in the traced graph (`probe` outputs it).
        probe: A functional model from the traced inputs to `feed`.
        filters: Channels of the convolution (the last-axis period of
            `feed`, also after a Flatten).
    """

    def __init__(self, layer, feed, probe, filters):
        self.layer = layer
        self.feed = feed
        self.probe = probe
        self.filters = int(filters)
        # Traced once: an eager call of a ResNet-20 prefix on 128 images
        # took ~0.25 s, most of a drop's time.
        self._run = tf.function(lambda batch: probe(batch, training=False),
                                reduce_retracing=True)

    def read(self, batches):
        """The channels as the consumer sees them: `(rows, filters)`
        float64, over every position of every image of `batches`."""
        parts = [keras.ops.convert_to_numpy(self._run(b)) for b in batches]
        return np.concatenate(
            [p.reshape(-1, self.filters) for p in parts]).astype("float64")

    def read_after_drop(self, before, dropped, batch):
        """`read()` once `dropped` are out, from `before` and one batch.

        The kept channels do not change, and a dropped channel no longer
        depends on the image (its filter is zero), so one image gives its
        values for all: half the reads of a second `read()`.
        """
        one = self.read([batch])
        per_image = len(one) // len(batch)
        after = before.copy()
        after[:, dropped] = np.tile(one[:per_image, dropped],
                                    (len(before) // per_image, 1))
        return after

    def refit(self, before, after, dropped, rng):
        """Folds the dropped channels into the kept ones.

        Args:
            before: `read()` before the drop.
            after: `read()` after it (dropped channels at their held
                value; kept channels unchanged).
            dropped: Indices of the dropped channels.
            rng: `numpy.random.Generator` choosing the rows when there
                are more than `MAX_ROWS`.

        The constant part goes into the bias (when the layer has one),
        which is exact where the layer reads no zero padding; at the
        border of a "same" convolution the padded taps get it too.

        Returns:
            The share of the lost signal's variance the kept channels
            explain (R^2 of the fit, over the dropped channels).
        """
        dropped = np.asarray(dropped, "int64")
        kept = np.setdiff1d(np.arange(self.filters), dropped)
        if len(before) > MAX_ROWS:
            rows = np.sort(rng.choice(len(before), MAX_ROWS, replace=False))
            before, after = before[rows], after[rows]
        lost = before[:, dropped] - after[:, dropped]
        bias = getattr(self.layer, "bias", None) if getattr(
            self.layer, "use_bias", False) else None
        columns = [after[:, kept]]
        if bias is not None:
            columns.append(np.ones((len(after), 1)))
        design = np.concatenate(columns, axis=1)
        gram = design.T @ design
        ridge = RIDGE * max(float(np.trace(gram)) / len(gram), 1e-12)
        coefficients = np.linalg.solve(
            gram + ridge * np.eye(len(gram)), design.T @ lost)
        residual = lost - design @ coefficients
        spread = np.sum((lost - lost.mean(axis=0)) ** 2)
        explained = 1.0 - float(np.sum(residual ** 2) / spread) if (
            spread > 0) else 1.0
        # Every consumer's kernel as (taps, input channels, outputs): a
        # convolution's spatial taps, a Dense after Flatten's positions.
        kernel = keras.ops.convert_to_numpy(self.layer.kernel)
        weights = kernel.astype("float64").reshape(
            -1, self.filters, kernel.shape[-1])
        outgoing = weights[:, dropped, :]
        weights[:, kept, :] += np.einsum(
            "kd,tdo->tko", coefficients[: len(kept)], outgoing)
        self.layer.kernel.assign(weights.reshape(kernel.shape).astype(
            kernel.dtype))
        if bias is not None:
            value = keras.ops.convert_to_numpy(bias).astype("float64")
            value += np.einsum("d,tdo->o", coefficients[-1], outgoing)
            bias.assign(value.astype(np.dtype(bias.dtype)))
        return explained


def find_consumer(conv, calls, traced):
    """The `Consumer` of `conv`'s channels, or a string saying why none.

    Args:
        conv: A convolution of the traced model.
        calls: `keras_slim.graph.trace(model)[0]`.
        traced: `keras_slim.graph.trace(model)[1]`.

    Example:

    >>> calls, traced = keras_slim.graph.trace(model)
    >>> consumer = find_consumer(model.get_layer("conv2"), calls, traced)
    >>> consumer.layer.name
    'conv3'
    """
    filters = int(conv.kernel.shape[-1])
    producers = [c for c in calls if c.layer is conv]
    if len(producers) != 1 or len(producers[0].outputs) != 1:
        return "it is not called exactly once in the model's graph"
    tensor = producers[0].outputs[0]
    flattened = False
    while True:
        readers = [c for c in calls if any(t is tensor for t in c.inputs)]
        if len(readers) != 1:
            return (f"its output reaches {len(readers)} layers (for example "
                    "a residual sum), not one")
        layer = readers[0].layer
        if isinstance(layer, _CONSUMERS):
            break
        if isinstance(layer, keras.layers.Flatten) and not flattened:
            flattened = True
        elif not isinstance(layer, _CHANNELWISE) or (
                flattened and not isinstance(layer, keras.layers.Dropout)):
            return (f"'{layer.name}' ({type(layer).__name__}) between it and "
                    "the next Conv or Dense may mix channels")
        if not _channels_last(layer):
            return f"'{layer.name}' is not channels-last"
        if len(readers[0].outputs) != 1:
            return f"'{layer.name}' has more than one output"
        tensor = readers[0].outputs[0]
    if sum(c.layer is layer for c in calls) != 1:
        return f"its next layer '{layer.name}' is shared (called twice)"
    if getattr(layer, "lora_enabled", False) or getattr(
            layer, "quantization_mode", None):
        return (f"its next layer '{layer.name}' has LoRA or quantized "
                "weights")
    if not isinstance(layer, keras.layers.Dense) and (
            getattr(layer, "groups", 1) != 1 or not _channels_last(layer)):
        return (f"its next layer '{layer.name}' is a grouped or "
                "channels-first convolution")
    size = int(np.prod(tensor.shape[1:])) if flattened else int(
        tensor.shape[-1])
    if int(layer.kernel.shape[-2]) != size or (
            size % filters if flattened else size != filters):
        return (f"the next layer '{layer.name}' does not read its "
                f"{filters} channels as the last axis")
    inputs = traced.inputs[0] if len(traced.inputs) == 1 else traced.inputs
    probe = keras.Model(inputs, tensor)
    return Consumer(layer, tensor, probe, filters)


def consumers(model, convs):
    """`{conv name: Consumer or reason}` for `convs` of `model`.

    A model without a functional graph gives every conv the same reason.

    Example:

    >>> found = consumers(model, [model.get_layer("conv2")])
    """
    if not getattr(model, "inputs", None):
        return {c.name: "the model has no functional graph" for c in convs}
    calls, traced = graph_lib.trace(model)
    return {c.name: find_consumer(c, calls, traced) for c in convs}
