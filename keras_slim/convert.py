"""`slim()`: turn an existing Keras model into a `SlimmableModel`."""

import math

import keras
import numpy as np

from keras_slim import width as width_lib
from keras_slim.layers.convolution import SlimConv2D
from keras_slim.layers.convolution import SlimDense
from keras_slim.layers.convolution import SlimDepthwiseConv2D
from keras_slim.layers.normalization import SlimBatchNormalization
from keras_slim.layers.normalization import SwitchableBatchNormalization
from keras_slim.model import SlimmableModel

# Layers that do not mix channels: the active channels pass through them.
_CHANNELWISE = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.Softmax,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.ZeroPadding2D,
    keras.layers.Cropping2D,
    keras.layers.UpSampling2D,
    keras.layers.Identity,
    keras.layers.ActivityRegularization,
)

_SUPPORTED = (
    "Conv2D, DepthwiseConv2D, Dense, BatchNormalization, Add, Concatenate, "
    "Flatten, activations, dropout, pooling and padding layers"
)


class _Groups:
    """Union-find over channel groups tied by `Add`."""

    def __init__(self):
        self.parent = {}

    def add(self, group):
        self.parent.setdefault(group, group)

    def find(self, group):
        while self.parent[group] != group:
            group = self.parent[group]
        return group

    def union(self, a, b):
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a


def _flat(args):
    return list(keras.tree.flatten(args))


def _classifier_layers(model):
    """Layers whose outputs are the model's outputs (never slimmed)."""
    names = set()
    pending = list(model.outputs)
    while pending:
        tensor = pending.pop()
        history = tensor._keras_history
        layer = history.operation
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            names.add(layer.name)
            continue
        if isinstance(layer, keras.layers.InputLayer):
            continue
        node = layer._inbound_nodes[history.node_index]
        pending.extend(node.input_tensors)
    return names


def _as_functional(model):
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ValueError(
                "slim() needs a built model with a known input shape: add an "
                "keras.Input(shape=...) to the Sequential model or build it."
            )
        inputs = keras.Input(batch_shape=model.inputs[0].shape)
        outputs = inputs
        for layer in model.layers:
            outputs = layer(outputs)
        return keras.Model(inputs, outputs, name=model.name)
    if not hasattr(model, "inputs") or not model.inputs:
        raise ValueError(
            "slim() converts Sequential and functional models; got a "
            f"subclassed model ({type(model).__name__}). Rebuild it with the "
            "functional API."
        )
    return model


def slim(
    model,
    width_range=(0.25, 1.0),
    widths=None,
    divisor=1,
    min_channels=None,
    triangular=False,
    switchable_bn=None,
    bn_momentum=None,
    synchronized_bn=None,
):
    """Turns a Keras model into a `SlimmableModel`, keeping its weights.

    Every `Conv2D`, `DepthwiseConv2D`, `Dense` and `BatchNormalization` is
    replaced by its `keras_slim.layers` counterpart, built at the max width,
    with the original weights in the leading slice (so width 1.0 computes
    what the original model computed). The model's input channels and its
    outputs are never slimmed; channels joined by `Add` are tied to one
    count; `Concatenate` and `Flatten` are followed exactly.

    Args:
        model: A built Sequential or functional Keras model.
        width_range: `(min_width, max_width)` for a universally slimmable
            network (US-Net); max may exceed 1.0.
        widths: A fixed list of widths to train instead (S-Net). With
            switchable BN (the default without `triangular`) only these
            widths run; with a shared BN (k-width Any-Width Networks) they
            are the training widths and any width in their range runs.
        divisor: Channel counts are multiples of this (8 in the papers'
            ImageNet models, 1 for small networks).
        min_channels: Smallest channel count (default `divisor`).
        triangular: Any-Width Networks: lower-triangular (staircase) kernel
            masks so that every width is exact with one shared BN.
        switchable_bn: Private BN per width. Defaults to True for a `widths`
            list without `triangular`, else False.
        bn_momentum: Override the BN momentum (Keras' default 0.99 adapts
            slowly on small data; the papers use 0.9).
        synchronized_bn: Override BN's cross-replica synchronization.

    Returns:
        A `keras_slim.SlimmableModel`.

    Raises:
        ValueError: for a layer that cannot be slimmed, naming it.

    Example:

    >>> base = keras.Sequential([
    ...     keras.Input((32, 32, 3)),
    ...     keras.layers.Conv2D(32, 3, activation="relu"),
    ...     keras.layers.GlobalAveragePooling2D(),
    ...     keras.layers.Dense(10),
    ... ])
    >>> model = keras_slim.slim(base, width_range=(0.25, 1.0))
    >>> model.set_width(0.5)
    """
    if widths is not None:
        widths = sorted(
            width_lib.validate_width(w, (1e-9, float("inf"))) for w in widths
        )
        width_range = (widths[0], widths[-1])
    width_range = width_lib.validate_width_range(width_range)
    max_width = width_range[1]
    if switchable_bn is None:
        switchable_bn = widths is not None and not triangular
    if switchable_bn and widths is None:
        raise ValueError(
            "switchable_bn=True needs a fixed `widths` list (S-Net): private "
            "BN statistics exist only for listed widths."
        )
    functional = _as_functional(model)
    classifiers = _classifier_layers(functional)
    groups = _Groups()
    base_channels = {}
    layouts = {}  # id(KerasTensor) -> list of [group or None, channels]
    repeats = {}  # id(KerasTensor) -> spatial positions folded in by Flatten
    created = {}  # original name -> new layer
    input_groups = {}  # triangular layer name -> its input group

    def layout_of(tensor):
        if id(tensor) not in layouts:  # a model input: fixed channels
            layouts[id(tensor)] = [[None, int(tensor.shape[-1])]]
            repeats[id(tensor)] = 1
        return layouts[id(tensor)], repeats[id(tensor)]

    def slimmed(layout):
        return any(group is not None for group, _ in layout)

    def input_layout(layout, repeat):
        if repeat == 1 and len(layout) == 1:
            return None  # the active channels are a prefix: slice, no gather
        return {"blocks": [list(b) for b in layout], "repeat": repeat}

    def unsupported(layer, why):
        return ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) cannot be "
            f"slimmed: {why}. slim() supports {_SUPPORTED}; layers before "
            "the first convolution (fixed input channels) may be anything. "
            "Replace the layer or rebuild that part of the model."
        )

    def channels_at_max(filters):
        if max_width == 1.0:
            return filters
        return width_lib.make_divisible(
            filters * max_width, divisor, min_channels
        )

    def call_function(layer, *args, **kwargs):
        inputs = _flat(args)
        in_layouts = [layout_of(t) for t in inputs]
        layout, repeat = in_layouts[0]
        config = layer.get_config()
        out_layout, out_repeat = layout, repeat
        is_slimmed = any(slimmed(lay) for lay, _ in in_layouts)

        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            if isinstance(layer, keras.layers.Conv2D) and (
                type(layer) is not keras.layers.Conv2D or layer.groups != 1
            ):
                raise unsupported(layer, "only plain Conv2D with groups=1")
            filters = config.get("filters", config.get("units"))
            slim_out = layer.name not in classifiers
            group = layer.name if slim_out else None
            if slim_out:
                groups.add(group)
                base_channels[group] = filters
                filters = channels_at_max(filters)
            tri = bool(triangular) and is_slimmed and slim_out
            if tri and (repeat != 1 or len(layout) != 1):
                tri = False  # Concatenate/Flatten inputs stay dense
            if tri:
                input_groups[layer.name] = layout[0][0]
            slim_kwargs = dict(
                slim_in=is_slimmed,
                slim_out=slim_out,
                channel_group=group,
                input_layout=input_layout(layout, repeat),
                triangular=tri,
            )
            if isinstance(layer, keras.layers.Conv2D):
                config["filters"] = filters
                new = SlimConv2D(**config, **slim_kwargs)
            else:
                config["units"] = filters
                new = SlimDense(**config, **slim_kwargs)
            out_layout = [[group, filters]]
            out_repeat = 1
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            if is_slimmed and layer.depth_multiplier != 1:
                raise unsupported(
                    layer, "depth_multiplier must be 1 on slimmed channels"
                )
            new = SlimDepthwiseConv2D(
                **config, input_layout=input_layout(layout, repeat)
            )
        elif isinstance(layer, keras.layers.BatchNormalization):
            if config["axis"] not in (-1, len(inputs[0].shape) - 1):
                raise unsupported(layer, "BN must normalise the last axis")
            config["axis"] = -1
            if bn_momentum is not None:
                config["momentum"] = bn_momentum
            if synchronized_bn is not None:
                config["synchronized"] = synchronized_bn
            if switchable_bn:
                new = SwitchableBatchNormalization(
                    num_widths=len(widths),
                    input_layout=input_layout(layout, repeat),
                    **config,
                )
            else:
                new = SlimBatchNormalization(
                    input_layout=input_layout(layout, repeat), **config
                )
        elif isinstance(layer, keras.layers.Add):
            blocks = [lay for lay, _ in in_layouts]
            if any(len(b) != 1 for b in blocks) or any(
                r != 1 for _, r in in_layouts
            ):
                raise unsupported(layer, "its inputs must each be one block")
            tied = [b[0][0] for b in blocks]
            if is_slimmed and None in tied:
                raise unsupported(
                    layer, "it adds slimmed channels to fixed-width channels"
                )
            for other in tied[1:]:
                if other is not None:
                    groups.union(tied[0], other)
            new = layer.__class__.from_config(config)
        elif isinstance(layer, keras.layers.Concatenate):
            if layer.axis not in (-1, len(inputs[0].shape) - 1):
                raise unsupported(layer, "only channel-axis concatenation")
            if any(r != 1 for _, r in in_layouts):
                raise unsupported(layer, "its inputs were flattened")
            out_layout = [b for lay, _ in in_layouts for b in lay]
            new = layer.__class__.from_config(config)
        elif isinstance(layer, keras.layers.Flatten):
            positions = int(np.prod(inputs[0].shape[1:-1]))
            out_repeat = repeat * positions
            new = layer.__class__.from_config(config)
        elif isinstance(layer, _CHANNELWISE) or not is_slimmed:
            new = layer.__class__.from_config(config)
            if not is_slimmed:
                output = new(*args, **kwargs)
                for t in _flat(output):
                    layouts[id(t)] = [[None, int(t.shape[-1])]]
                    repeats[id(t)] = 1
                created[layer.name] = new
                return output
        else:
            raise unsupported(layer, "it changes or mixes channels")

        output = new(*args, **kwargs)
        for t in _flat(output):
            layouts[id(t)] = out_layout
            repeats[id(t)] = out_repeat
        created[layer.name] = new
        return output

    network = keras.models.clone_model(
        functional, clone_function=lambda layer: layer,
        call_function=call_function,
    )

    # Tie groups joined by Add: every layer names its group's root.
    def root(group):
        return None if group is None else groups.find(group)

    for new in created.values():
        if getattr(new, "channel_group", None) is not None and new.slim_out:
            new.channel_group = root(new.channel_group)
        if getattr(new, "input_layout", None):
            for block in new.input_layout["blocks"]:
                block[0] = root(block[0])
    tied_base = {}
    for group, channels in base_channels.items():
        tied_base.setdefault(root(group), channels)
        if tied_base[root(group)] != channels:
            raise ValueError(
                f"Layers tied by Add have different channel counts "
                f"({tied_base[root(group)]} and {channels}); the original "
                "model cannot have computed that sum."
            )

    _copy_weights(functional, created)
    slim_model = SlimmableModel(
        network,
        width_range=width_range,
        widths=widths,
        divisor=divisor,
        min_channels=min_channels,
        outputs_logits=_outputs_logits(functional),
        base_channels=tied_base,
        name=f"slim_{model.name}",
    )
    if triangular:
        set_staircases(slim_model, {
            name: root(group) for name, group in input_groups.items()
        })
    return slim_model


def set_staircases(model, input_groups):
    """Sets the exact staircase masks of a model's triangular layers.

    Args:
        model: A `SlimmableModel`.
        input_groups: dict triangular layer name -> channel group of its
            input.
    """
    index = {g: i for i, g in enumerate(model.channel_groups)}

    def counts_fn(group):
        i = index[group]

        def counts(widths):
            return width_lib.channel_counts(
                model._base_channels[i : i + 1],
                model.full_channels[i : i + 1],
                widths,
                model.divisor,
                model.min_channels,
            )[..., 0]

        return counts

    for name, in_group in input_groups.items():
        layer = model.get_layer(name)
        out_full = layer.triangular_mask.shape[1]
        limits = width_lib.staircase(
            counts_fn(in_group),
            counts_fn(layer.channel_group),
            out_full,
            # Exact at every width of the range unless switchable BN
            # restricts the network to its listed widths.
            widths=model.widths if model.switchable else None,
            width_range=model.width_range,
        )
        layer.set_staircase(limits)


def _outputs_logits(model):
    for name in _classifier_layers(model):
        activation = getattr(model.get_layer(name), "activation", None)
        if activation is not None and activation.__name__ == "softmax":
            return False
    last = model.layers[-1]
    return not (
        isinstance(last, keras.layers.Softmax)
        or getattr(getattr(last, "activation", None), "__name__", "") == "softmax"
    )


def _copy_weights(original, created):
    """Copies each original layer's weights into the leading slices."""
    for layer in original.layers:
        new = created.get(layer.name)
        if new is None:
            continue
        if isinstance(new, (SlimBatchNormalization, SwitchableBatchNormalization)):
            sources = {
                "gamma": getattr(layer, "gamma", None),
                "beta": getattr(layer, "beta", None),
                "moving_mean": layer.moving_mean,
                "moving_variance": layer.moving_variance,
            }
            for name, source in sources.items():
                if source is None:
                    continue
                target = getattr(new, name)
                value = np.array(target.numpy())
                src = np.asarray(source.numpy())
                value[..., : src.shape[-1]] = src
                target.assign(value)
            continue
        for source, target in zip(layer.weights, new.weights):
            src = np.asarray(source.numpy())
            value = np.array(target.numpy())
            value[tuple(slice(0, n) for n in src.shape)] = src
            target.assign(value)
