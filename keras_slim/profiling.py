"""Cost of a width: multiply-accumulates and parameters.

Counting convention (that of the MobileNet / Slimmable Networks papers'
"FLOPs", which are multiply-adds):

- convolution: `k_h * k_w * C_in / groups * C_out * H_out * W_out` MACs;
- depthwise convolution: `k_h * k_w * C * multiplier * H_out * W_out`;
- dense: `in * out` per output position (times the positions of a >2D input);
- batch normalization, bias additions, activations, pooling and `Add` cost
  no MACs; their parameters (BN gamma, beta and moving statistics, biases)
  do count as parameters.

A slimmable model is counted through `keras_slim.strip`, so the numbers are
those of exactly the network an export of that width contains. Measured
latency is `keras_slim.profile_latency` (in `keras_slim.export.latency`).
"""

import keras
import numpy as np

from keras_slim import graph
from keras_slim.model import SlimmableModel
from keras_slim.stripping import strip


def kernel_macs(kind, window, in_channels, out_channels, positions,
                multiplier=1):
    """MACs of one kernel layer call: the counting convention in one place.

    Used by `profile` (from a layer's kernel shapes) and by the search's
    cost model (from channel counts), so the two always agree.

    Args:
        kind: "kernel" (convolution or dense; `in_channels` per group),
            "depthwise" or "separable".
        window: Product of the kernel's spatial sizes (1 for a dense layer).
        in_channels: Input channels (per group for a grouped convolution).
        out_channels: Output channels (ignored for "depthwise").
        positions: Output positions (input positions for a transposed
            convolution, where every input position scatters one kernel).
        multiplier: The depth multiplier of "depthwise" and "separable".

    Example:

    >>> kernel_macs("kernel", 9, 16, 32, 8 * 8)   # 3x3 conv on 8x8
    294912
    """
    if kind == "separable":
        depthwise = window * in_channels * multiplier
        return (depthwise + in_channels * multiplier * out_channels) * positions
    if kind == "depthwise":
        return window * in_channels * multiplier * positions
    if kind == "kernel":
        return window * in_channels * out_channels * positions
    raise ValueError(f"Unknown kernel kind {kind!r}; allowed: 'kernel', "
                     "'depthwise', 'separable'.")


def _layer_macs(layer, in_shape, out_shape):
    """MACs of one call of `layer` (0 for layers without a kernel)."""

    def positions(shape):
        dims = shape[1:-1]
        if any(d is None for d in dims):
            raise ValueError(
                f"Layer '{layer.name}' has an unknown spatial size "
                f"(output shape {tuple(out_shape)}); pass "
                "profile(..., input_shape=(H, W, C))."
            )
        return int(np.prod(dims)) if dims else 1

    if isinstance(layer, keras.layers.SeparableConv2D):
        *window, channels, multiplier = layer.depthwise_kernel.shape
        return kernel_macs("separable", int(np.prod(window)), channels,
                           layer.pointwise_kernel.shape[-1],
                           positions(out_shape), multiplier)
    if isinstance(layer, keras.layers.Conv2DTranspose):
        # kernel = (*k, C_out, C_in); every input position scatters one
        # full kernel.
        *window, out_channels, in_channels = layer.kernel.shape
        return kernel_macs("kernel", int(np.prod(window)), in_channels,
                           out_channels, positions(in_shape))
    if isinstance(layer, (keras.layers.DepthwiseConv2D,
                          keras.layers.DepthwiseConv1D)):
        *window, channels, multiplier = layer.kernel.shape
        return kernel_macs("depthwise", int(np.prod(window)), channels, None,
                           positions(out_shape), multiplier)
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D,
                          keras.layers.Conv3D, keras.layers.Dense)):
        # kernel = (*k, C_in / groups, C_out); a dense kernel has no window.
        *window, fan_in, out_channels = layer.kernel.shape
        return kernel_macs("kernel", int(np.prod(window)) if window else 1,
                           fan_in, out_channels, positions(out_shape))
    return 0


def _profile_graph(model, input_shape):
    """One row per layer call of `model` (nested models expanded)."""
    input_tensors = None
    if input_shape is not None:
        if len(model.inputs) != 1:
            raise ValueError(
                "profile() supports single-input models; "
                f"'{model.name}' has {len(model.inputs)} inputs."
            )
        input_tensors = keras.Input(shape=tuple(input_shape))
    calls, traced = graph.trace(model, input_tensors=input_tensors)
    rows, counted = [], set()
    for call in calls:
        layer = call.layer
        in_shape = call.inputs[0].shape if call.inputs else None
        out_shape = call.outputs[0].shape
        # A layer called several times has its MACs counted per call and its
        # parameters once; keras.ops operations have neither.
        params = 0
        if isinstance(layer, keras.layers.Layer) and id(layer) not in counted:
            params = layer.count_params()
            counted.add(id(layer))
        rows.append({
            "name": layer.name,
            "type": type(layer).__name__,
            "output_shape": [None if d is None else int(d) for d in out_shape],
            "channels": None if out_shape[-1] is None else int(out_shape[-1]),
            "macs": _layer_macs(layer, in_shape, out_shape),
            "params": int(params),
        })
    return rows, traced


def profile(model, width=None, input_shape=None):
    """Multiply-accumulates and parameters of a width, total and per layer.

    See the module docstring for the counting convention (conv/dense MACs
    only; BN and bias parameters are parameters; activations, BN, pooling
    and additions are free).

    Args:
        model: A `keras_slim.SlimmableModel`, or any built functional or
            Sequential Keras model.
        width: For a `SlimmableModel`, a width or a dict layer name ->
            channels (default: the width of the last `set_width`). Must be
            None for a plain Keras model.
        input_shape: Input shape without the batch dimension, e.g.
            `(224, 224, 3)`, to count at another resolution or when the
            model's spatial size is unknown.

    Returns:
        A dict with "macs", "params" (every weight the exported network
        stores, BN moving statistics included), "trainable_params",
        "input_shape", "width" (None for a plain model), "channels"
        (layer name -> output channels of each conv/dense layer) and
        "layers" (a list of per-layer dicts: name, type, output_shape,
        channels, macs, params).

    Raises:
        ValueError: for a width outside the model's range, a width given
            for a plain model, or an unknown spatial size.

    Example:

    >>> keras_slim.profile(model, 0.5)["macs"]
    1234567
    >>> [keras_slim.profile(model, w)["macs"] for w in (0.25, 1.0)]
    """
    if isinstance(model, SlimmableModel):
        width = model.width if width is None else width
        network = strip(model, width)
    else:
        if not isinstance(model, keras.Model):
            raise ValueError(
                "profile() takes a keras_slim.SlimmableModel or a Keras "
                f"model; got {type(model).__name__}."
            )
        if width is not None:
            raise ValueError(
                "`width` applies to a keras_slim.SlimmableModel only; "
                f"got width={width!r} for a plain Keras model."
            )
        network = model
    if not network.built:
        raise ValueError(
            f"Model '{network.name}' is not built; build it or give it an "
            "keras.Input."
        )
    rows, traced = _profile_graph(graph.as_functional(network), input_shape)
    trainable = sum(int(np.prod(w.shape)) for w in network.trainable_weights)
    return {
        "width": width,
        "input_shape": [
            None if d is None else int(d) for d in traced.inputs[0].shape[1:]
        ],
        "macs": int(sum(r["macs"] for r in rows)),
        "params": int(sum(r["params"] for r in rows)),
        "trainable_params": int(trainable),
        "channels": {r["name"]: r["channels"] for r in rows if r["macs"]},
        "layers": rows,
    }
