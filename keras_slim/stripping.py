"""`strip()`: the plain Keras model of one width of a slimmable network.

A `SlimmableModel` computes every width with full-size kernels, slicing (and,
after `Concatenate`/`Flatten`, gathering) the active channels at run time.
`strip` bakes one width into an ordinary functional model of stock Keras
layers (`Conv2D`, `DepthwiseConv2D`, `Dense`, `BatchNormalization`, pooling,
`Add`, `Concatenate`, `Flatten`, activations, ...) whose weights are the
active slices: exactly the network one would have built natively at that
width, with no slicing or gather ops left. It is what the exporters convert
and what `keras_slim.profile` counts.
"""

import keras
import numpy as np

from keras_slim import graph
from keras_slim import registry
from keras_slim.layers import scope as aw
from keras_slim.layers.channelwise import SlimChannelwise
from keras_slim.layers.convolution import SlimConv1D
from keras_slim.layers.convolution import SlimConv2D
from keras_slim.layers.convolution import SlimConv3D
from keras_slim.layers.convolution import SlimDense
from keras_slim.layers.convolution import SlimDepthwiseConv2D
from keras_slim.layers.convolution import SlimSeparableConv2D
from keras_slim.layers.normalization import SlimLayerNormalization
from keras_slim.layers.normalization import SwitchableBatchNormalization
from keras_slim.layers.normalization import _SlimNormalizationBase
from keras_slim.model import SlimmableModel
from keras_slim.width import width_suffix

# The stock layer each slim kernel layer strips to.
_STOCK_KERNELS = {
    SlimConv1D: keras.layers.Conv1D,
    SlimConv2D: keras.layers.Conv2D,
    SlimConv3D: keras.layers.Conv3D,
    SlimDense: keras.layers.Dense,
}

# Config keys of the slim layers that stock layers do not know.
_SLIM_KEYS = (
    "slim_in",
    "slim_out",
    "channel_group",
    "input_layout",
    "output_layout",
    "triangular",
    "calibration_keys",
    "num_widths",
)


def _numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable))


def _stock_config(layer, **overrides):
    config = {
        k: v for k, v in layer.get_config().items() if k not in _SLIM_KEYS
    }
    if config.get("lora_rank") is not None:
        # `layer.kernel` already includes the LoRA update; export it merged.
        config["lora_rank"] = None
    config.update(overrides)
    return config


class _Stripper:
    """Replays a slim network's graph with stock layers of one width."""

    def __init__(self, model, width):
        self.model = model
        self.counts = dict(zip(model.channel_groups, model.channels_for(width)))
        self.row = model.width_index(width)
        self.key = model.calibration_key(width)
        self.bn_sources = {}  # BN layer name -> "calibrated" | "moving"

    # ------------------------------------------------------------- helpers
    def _input_indices(self, layer, tensor, full_in):
        """Indices of the full-width input channels the stripped input has."""
        channels = int(tensor.shape[-1])
        if layer.input_layout is not None:
            indices = aw.input_channel_indices(
                layer.input_layout, full_in, counts=self.counts
            )
        else:
            indices = np.arange(channels)
        if len(indices) != channels or channels > full_in:
            raise ValueError(
                f"strip(): layer '{layer.name}' receives {channels} channels "
                f"but the width selects {len(indices)} of its {full_in} "
                "inputs. The network's channel groups are inconsistent."
            )
        return indices

    def _out_indices(self, layer, full_out):
        """Indices of the active outputs of a conv/dense layer."""
        if not layer.slim_out:
            return np.arange(full_out)
        if layer.output_layout is not None:
            return aw.input_channel_indices(
                layer.output_layout, full_out, counts=self.counts
            )
        count = self.counts.get(layer.channel_group, full_out)
        return np.arange(min(int(count), full_out))

    # --------------------------------------------------------------- layers
    def kernel_layer(self, layer, tensor):
        """SlimConv2D / SlimDense -> Conv2D / Dense with sliced weights."""
        kernel = _numpy(layer.kernel)
        full_in, full_out = kernel.shape[-2], kernel.shape[-1]
        if getattr(layer, "groups", 1) != 1:
            return self.grouped_layer(layer, tensor, kernel)
        indices = self._input_indices(layer, tensor, full_in)
        out = self._out_indices(layer, full_out)
        if layer.triangular_mask is not None:
            kernel = kernel * _numpy(layer.triangular_mask)
        kernel = np.take(np.take(kernel, indices, axis=-2), out, axis=-1)
        weights = [kernel]
        if layer.use_bias:
            weights.append(_numpy(layer.bias)[out])
        size = "units" if isinstance(layer, SlimDense) else "filters"
        stock = next(_STOCK_KERNELS[c] for c in type(layer).__mro__
                     if c in _STOCK_KERNELS)
        return stock(**_stock_config(layer, **{size: len(out)})), weights

    def grouped_layer(self, layer, tensor, kernel):
        """A grouped SlimConv2D: whole groups, sliced outputs."""
        per_group = kernel.shape[-2]
        groups = int(tensor.shape[-1]) // per_group
        out = len(self._out_indices(layer, kernel.shape[-1]))
        weights = [kernel[..., :out]]
        if layer.use_bias:
            weights.append(_numpy(layer.bias)[:out])
        config = _stock_config(layer, filters=out, groups=groups)
        return keras.layers.Conv2D(**config), weights

    def separable_layer(self, layer, tensor):
        depthwise = _numpy(layer.depthwise_kernel)
        pointwise = _numpy(layer.pointwise_kernel)
        full_in, multiplier = depthwise.shape[-2:]
        indices = self._input_indices(layer, tensor, full_in)
        rows = (indices[:, None] * multiplier
                + np.arange(multiplier)[None, :]).reshape(-1)
        out = self._out_indices(layer, pointwise.shape[-1])
        if layer.triangular_mask is not None:
            pointwise = pointwise * _numpy(layer.triangular_mask)
        weights = [
            np.take(depthwise, indices, axis=2),
            np.take(np.take(pointwise, rows, axis=2), out, axis=-1),
        ]
        if layer.use_bias:
            weights.append(_numpy(layer.bias)[out])
        out = len(out)
        config = _stock_config(layer, filters=out)
        return keras.layers.SeparableConv2D(**config), weights

    def layer_norm_layer(self, layer, tensor):
        indices = self._input_indices(layer, tensor, layer.channels)
        weights = {}
        if layer.gamma is not None:
            weights["gamma"] = _numpy(layer.gamma)[indices]
        if layer.beta is not None:
            weights["beta"] = _numpy(layer.beta)[indices]
        config = _stock_config(layer, axis=-1)
        return keras.layers.LayerNormalization(**config), weights

    def channelwise_layer(self, layer, tensor):
        """SlimChannelwise -> the wrapped layer with its weights sliced."""
        indices = self._input_indices(layer, tensor, layer.channels)
        inner = layer.layer
        config = inner.get_config()
        rule = registry.rule_for(inner)
        if rule is not None and rule.config_for_channels is not None:
            config = rule.config_for_channels(config, len(indices))
        config["name"] = layer.name
        weights = []
        for variable in inner.weights:
            value = _numpy(variable)
            if value.ndim and value.shape[-1] == layer.channels:
                value = np.take(value, indices, axis=-1)
            weights.append(value)
        return type(inner).from_config(config), weights

    def depthwise_layer(self, layer, tensor):
        kernel = _numpy(layer.kernel)
        full, multiplier = kernel.shape[-2], kernel.shape[-1]
        indices = self._input_indices(layer, tensor, full)
        weights = [np.take(kernel, indices, axis=2)]
        if layer.use_bias:
            bias = _numpy(layer.bias).reshape(full, multiplier)
            weights.append(bias[indices].reshape(-1))
        new = keras.layers.DepthwiseConv2D(**_stock_config(layer))
        return new, weights

    def bn_layer(self, layer, tensor):
        indices = self._input_indices(layer, tensor, layer.channels)
        switchable = isinstance(layer, SwitchableBatchNormalization)

        def row(variable):
            value = _numpy(variable)
            return (value[self.row] if switchable else value)[indices]

        if self.key in layer.calibrated:
            mean_var, variance_var = layer.calibrated[self.key]
            mean = _numpy(mean_var)[indices]
            variance = _numpy(variance_var)[indices]
            self.bn_sources[layer.name] = "calibrated"
        else:
            mean, variance = row(layer.moving_mean), row(layer.moving_variance)
            self.bn_sources[layer.name] = "moving"
        weights = {"moving_mean": mean, "moving_variance": variance}
        if layer.scale:
            weights["gamma"] = row(layer.gamma)
        if layer.center:
            weights["beta"] = row(layer.beta)
        config = _stock_config(layer, axis=-1)
        return keras.layers.BatchNormalization(**config), weights

    # ---------------------------------------------------------------- graph
    def call(self, layer, *args, **kwargs):
        """`call_function` of `clone_model`: builds and calls a stock layer."""
        tensor = keras.tree.flatten(args)[0]
        if not isinstance(layer, keras.layers.Layer):
            return layer(*args, **kwargs)  # a stateless keras.ops operation
        if isinstance(layer, tuple(_STOCK_KERNELS)):
            new, weights = self.kernel_layer(layer, tensor)
        elif isinstance(layer, SlimSeparableConv2D):
            new, weights = self.separable_layer(layer, tensor)
        elif isinstance(layer, SlimDepthwiseConv2D):
            new, weights = self.depthwise_layer(layer, tensor)
        elif isinstance(layer, _SlimNormalizationBase):
            new, weights = self.bn_layer(layer, tensor)
        elif isinstance(layer, SlimLayerNormalization):
            new, weights = self.layer_norm_layer(layer, tensor)
        elif isinstance(layer, SlimChannelwise):
            new, weights = self.channelwise_layer(layer, tensor)
        else:
            new = type(layer).from_config(layer.get_config())
            weights = layer.get_weights()
        outputs = new(*args, **kwargs)
        if isinstance(weights, dict):
            for name, value in weights.items():
                getattr(new, name).assign(value)
        elif weights:
            try:
                new.set_weights(weights)
            except ValueError as error:
                raise ValueError(
                    f"strip() cannot slice layer '{layer.name}' "
                    f"({type(layer).__name__}): it has weights and receives "
                    "slimmed channels, but only keras_slim layers know how to "
                    f"slice theirs. Original error: {error}"
                ) from None
        return outputs



def strip(model, width=None, fold_bn=False, name=None):
    """Returns the plain Keras model of one width of a slimmable network.

    The result is a functional model made of stock Keras layers whose
    channel counts are those of `width` and whose weights are the active
    slices of the slimmable model's weights (triangular masks multiplied in,
    inputs after `Concatenate`/`Flatten` gathered). Batch normalization
    uses the statistics `model.set_width(width)` would use: those stored by
    `keras_slim.calibrate_bn` for this width if any, else the moving
    statistics (the width's own row for S-Net's switchable BN). Its outputs
    equal `model.set_width(width); model.predict(x)` up to float round-off,
    and it contains no slicing or gather ops, so converters see exactly the
    network one would have built at that width.

    Args:
        model: A `keras_slim.SlimmableModel`.
        width: A width in `model.width_range` (one of `model.widths` for an
            S-Net) or a dict layer name -> channels. Defaults to the width
            last passed to `model.set_width`.
        fold_bn: Fold each BatchNormalization that directly follows a
            convolution or dense layer into that layer's kernel and bias
            (see `fold_batch_norm`).
        name: Name of the returned model (default: the network's name and
            the width).

    Returns:
        A `keras.Model` (functional). Layers keep the slim network's layer
        names; `stripped.bn_sources` maps each BN layer to "calibrated" or
        "moving" (the statistics it took).

    Raises:
        ValueError: for a width outside the model's range, an invalid
            configuration, or a layer that cannot be sliced.

    Example:

    >>> model = keras_slim.slim(base, width_range=(0.25, 1.0))
    >>> keras_slim.calibrate_bn(model, images, widths=[0.5])
    >>> half = keras_slim.strip(model, 0.5)
    >>> half.summary()  # a plain Keras model with half the channels
    >>> model.set_width(0.5)
    >>> np.abs(half.predict(images) - model.predict(images)).max()  # ~1e-6
    """
    if not isinstance(model, SlimmableModel):
        raise ValueError(
            "strip() takes a keras_slim.SlimmableModel (e.g. from "
            f"keras_slim.slim(...)); got {type(model).__name__}."
        )
    if width is None:
        width = model.width
    stripper = _Stripper(model, width)  # validates the width
    stripped = graph.replay(model.network, stripper.call)
    if fold_bn:
        stripped = fold_batch_norm(stripped)
    if name is None:
        name = f"{model.network.name}_{width_suffix(width)}"
    result = keras.Model(stripped.input, stripped.output, name=name)
    result.bn_sources = dict(stripper.bn_sources)
    return result


# ------------------------------------------------------------ BN folding
_FOLDABLE = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.Dense,
)


def _foldable_pairs(model):
    """dict conv layer name -> BN layer it can absorb."""
    calls, traced = graph.trace(model)
    consumers, calls_of, producer = {}, {}, {}
    for call in calls:
        calls_of[id(call.layer)] = calls_of.get(id(call.layer), 0) + 1
        for tensor in call.inputs:
            consumers[id(tensor)] = consumers.get(id(tensor), 0) + 1
        for tensor in call.outputs:
            producer[id(tensor)] = call.layer
    for tensor in traced.outputs:
        consumers[id(tensor)] = consumers.get(id(tensor), 0) + 1
    pairs = {}
    for call in calls:
        bn = call.layer
        if type(bn) is not keras.layers.BatchNormalization:
            continue
        if len(call.inputs) != 1 or calls_of[id(bn)] != 1:
            continue
        tensor = call.inputs[0]
        conv = producer.get(id(tensor))
        if (
            type(conv) not in _FOLDABLE
            or calls_of[id(conv)] != 1
            or consumers.get(id(tensor), 0) != 1
            or conv.activation not in (None, keras.activations.linear)
            or bn.axis not in (-1, len(tensor.shape) - 1)
            or call.kwargs.get("training")
            or (isinstance(conv, keras.layers.Conv2D) and conv.groups != 1)
        ):
            continue
        pairs[conv.name] = bn
    return pairs


def _folded_weights(layer, bn):
    """Kernel and bias of `layer` followed by inference-mode `bn`."""
    kernel = _numpy(layer.kernel)
    bias = _numpy(layer.bias) if layer.use_bias else 0.0
    channels = _numpy(bn.moving_mean).shape[0]
    gamma = _numpy(bn.gamma) if bn.scale else np.ones(channels, "float32")
    beta = _numpy(bn.beta) if bn.center else np.zeros(channels, "float32")
    scale = gamma / np.sqrt(_numpy(bn.moving_variance) + bn.epsilon)
    new_bias = (bias - _numpy(bn.moving_mean)) * scale + beta
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        # Output channel c * multiplier + m comes from kernel[..., c, m].
        kernel = kernel * scale.reshape(kernel.shape[-2:])
    else:
        kernel = kernel * scale
    return [kernel.astype("float32"), new_bias.astype("float32")]


def fold_batch_norm(model):
    """Folds inference-mode BatchNormalization into the preceding layer.

    Every stock `BatchNormalization` whose input comes straight from a
    `Conv2D`, `DepthwiseConv2D` or `Dense` without activation (and is not
    used anywhere else) is removed; that layer gets
    `kernel * gamma / sqrt(var + eps)` and
    `(bias - mean) * gamma / sqrt(var + eps) + beta`. Other BN layers stay.

    Args:
        model: A functional or Sequential Keras model of stock layers (e.g.
            `strip()`'s).

    Returns:
        A new functional model; the input model is unchanged.

    Example:

    >>> folded = keras_slim.fold_batch_norm(keras_slim.strip(model, 0.5))
    """
    model = graph.as_functional(model)
    pairs = _foldable_pairs(model)
    absorbed = {bn.name for bn in pairs.values()}

    def call(layer, *args, **kwargs):
        if not isinstance(layer, keras.layers.Layer):
            return layer(*args, **kwargs)  # a stateless keras.ops operation
        if isinstance(layer, keras.layers.BatchNormalization) and (
            layer.name in absorbed
        ):
            return args[0]
        if layer.name in pairs:
            config = dict(layer.get_config(), use_bias=True)
            new = type(layer).from_config(config)
            outputs = new(*args, **kwargs)
            new.set_weights(_folded_weights(layer, pairs[layer.name]))
            return outputs
        new = type(layer).from_config(layer.get_config())
        outputs = new(*args, **kwargs)
        new.set_weights(layer.get_weights())
        return outputs

    return graph.replay(model, call)
