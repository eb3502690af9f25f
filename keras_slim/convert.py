"""`slim()`: turn an existing Keras model into a `SlimmableModel`.

Two passes over the model's graph (`keras_slim.graph`):

1. `_Analysis` follows the channels of every tensor of the original model
   as a *layout*: the channel groups it is made of (`[group, channels]`
   blocks; one block per concatenated input), repeated once per spatial
   position after a `Flatten`. Element-wise layers tie the groups of their
   inputs; groups are only final once the whole graph has been seen (a
   concatenation added to a convolution's output splits that output).
2. `_Builder` replays the graph with slimmable layers built at the max
   width and copies the original weights to where each original channel
   sits in the wider tensors (its *origin*): with a max width above 1.0
   the blocks of a concatenation or a flattened tensor are wider than the
   original ones, so a leading-slice copy would put weights in the wrong
   rows. That is what keeps width 1.0 equal to the original model.
"""

import math

import keras
import numpy as np

from keras_slim import compat
from keras_slim import graph
from keras_slim import registry
from keras_slim import width as width_lib
from keras_slim.layers.channelwise import SlimChannelwise
from keras_slim.layers.convolution import SlimConv1D
from keras_slim.layers.convolution import SlimConv2D
from keras_slim.layers.convolution import SlimConv3D
from keras_slim.layers.convolution import SlimDense
from keras_slim.layers.convolution import SlimDepthwiseConv2D
from keras_slim.layers.convolution import SlimKernelMixin
from keras_slim.layers.convolution import SlimSeparableConv2D
from keras_slim.layers.normalization import SlimBatchNormalization
from keras_slim.layers.normalization import SlimLayerNormalization
from keras_slim.layers.normalization import SwitchableBatchNormalization
from keras_slim.model import SlimmableModel

_SUPPORTED = (
    "Conv1D, Conv2D (also grouped and depthwise as groups=channels), "
    "Conv3D, DepthwiseConv2D, SeparableConv2D, Dense, BatchNormalization, "
    "LayerNormalization, Concatenate, Flatten, channel-preserving Reshape, "
    "and element-wise layers and keras.ops (activations, pooling, padding, "
    "dropout, Add, Multiply, ...)"
)
# Layers whose outputs are a network's predictions when nothing but
# element-wise layers follows them: never slimmed.
_OUTPUT_KERNELS = (
    keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
    keras.layers.Dense, keras.layers.SeparableConv2D,
)
# Stock kernel layers and the slim layer that replaces each.
_SLIM_KERNELS = {
    keras.layers.Conv1D: SlimConv1D,
    keras.layers.Conv2D: SlimConv2D,
    keras.layers.Conv3D: SlimConv3D,
    keras.layers.Dense: SlimDense,
    keras.layers.SeparableConv2D: SlimSeparableConv2D,
}
# Layers with weights that mix channels in a way slim() does not slice:
# refused by name wherever they are (even before the first slimmed layer
# they would make the model look convertible while nothing slims).
_UNSUPPORTED_KERNELS = (
    keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose, keras.layers.DepthwiseConv1D,
    keras.layers.SeparableConv1D,
)


def _output_kernels(calls, traced):
    """Names of conv/dense layers whose outputs are the model's outputs."""
    producer = {id(t): call for call in calls for t in call.outputs}
    names = set()
    pending = list(traced.outputs)
    while pending:
        call = producer.get(id(pending.pop()))
        if call is None:  # a model input
            continue
        if isinstance(call.layer, _OUTPUT_KERNELS):
            names.add(call.layer.name)
            continue
        pending.extend(call.inputs)
    return names


def _layout_of(tensor_layouts, tensor):
    """The layout of a tensor: a model input has fixed channels."""
    return tensor_layouts.get(id(tensor)) or _Layout([[None, tensor.shape[-1]]])


class _Layout:
    """Channel blocks `[group, channels]` of a tensor, repeated `repeat`
    times (spatial positions folded in by a `Flatten`)."""

    def __init__(self, blocks, repeat=1):
        self.blocks = [[g, int(n)] for g, n in blocks]
        self.repeat = int(repeat)

    @property
    def slimmed(self):
        return any(g is not None for g, _ in self.blocks)

    @property
    def channels(self):
        return sum(n for _, n in self.blocks) * self.repeat


class _Analysis:
    """Which channel group every channel of the original model belongs to.

    Walks the original graph (no new weights) and records each tensor's
    layout in original channel counts. Element-wise layers tie the groups of
    their inputs; when one input is a concatenation and another a single
    convolution's output (NASNet, Inception-ResNet), the convolution's group
    is split at the concatenation's block boundaries, so that each part
    follows its own concatenated group. Groups are only final after the whole
    walk, which is why `slim()` builds the new layers in a second pass.
    """

    def __init__(self, output_kernels, fixed_layers, keep_ratio):
        self.output_kernels = output_kernels
        self.fixed_layers = fixed_layers
        self.keep_ratio = keep_ratio
        self.parent = {}  # union-find over leaf groups
        self.size = {}  # group -> channels in the original model
        self.parts = {}  # split root -> [(part, channels), ...]
        self.derived = {}  # group -> (parent, numerator, denominator)
        self.divisors = {}  # group -> divisor
        self.layouts = {}  # id(KerasTensor of the trace) -> _Layout
        self.plans = []  # per call: (layer, kind, input layouts, output)
        self.kernel_names = set()

    # ------------------------------------------------------- groups
    def new_group(self, name, size):
        self.parent[name] = name
        self.size[name] = int(size)
        return name

    def find(self, group):
        if group is None:
            return None
        while self.parent[group] != group:
            group = self.parent[group]
        return group

    def expand(self, blocks):
        """Blocks with every group replaced by its final leaf groups."""
        out = []
        for group, size in blocks:
            root = self.find(group)
            if root in self.parts:
                out += self.expand(self.parts[root])
            else:
                out.append([root, size])
        return out

    def split(self, group, cuts):
        """Splits a leaf group at the offsets `cuts` (0 < cut < size)."""
        if group in self.derived or any(
            self.find(p) == group for p, _, _ in self.derived.values()
        ):
            raise ValueError(
                f"Channel group '{group}' follows (or leads) another layer's "
                "width and cannot also be split across a concatenation."
            )
        bounds = [0] + sorted(cuts) + [self.size[group]]
        self.parts[group] = [
            (self.new_group(f"{group}/{a}", b - a), b - a)
            for a, b in zip(bounds, bounds[1:])
        ]

    def tie(self, layer, first, other):
        """Ties two layouts of the same channels, block by block."""
        if first.repeat != other.repeat:
            raise _unsupported(layer, "its inputs are flattened differently")
        while True:
            a, b = self.expand(first.blocks), self.expand(other.blocks)
            cuts_a, cuts_b = _offsets(a), _offsets(b)
            if cuts_a[-1] != cuts_b[-1]:
                raise _unsupported(
                    layer, "its inputs have different channel counts"
                )
            if cuts_a == cuts_b:
                break
            progress = False
            cuts = set(cuts_a) | set(cuts_b)
            for blocks, offsets in ((a, cuts_a), (b, cuts_b)):
                for (group, _), start, end in zip(blocks, offsets,
                                                  offsets[1:]):
                    inner = sorted(c - start for c in cuts if start < c < end)
                    if inner and group is not None:
                        self.split(group, inner)
                        progress = True
            if not progress:  # a fixed-width block would have to be split
                raise _unsupported(
                    layer, "it combines slimmed channels with fixed-width "
                    "channels"
                )
        for (ga, _), (gb, _) in zip(a, b):
            if (ga is None) != (gb is None):
                raise _unsupported(
                    layer, "it combines slimmed channels with fixed-width "
                    "channels"
                )
            if ga is not None and ga != gb:
                self.parent[self.find(gb)] = self.find(ga)

    # ------------------------------------------------------- the walk
    def run(self, calls):
        for call in calls:
            layer = call.layer
            ins = [_layout_of(self.layouts, t) for t in call.inputs]
            kind = _kind(layer, ins, call)
            out = getattr(self, kind)(layer, ins, call)
            if out is None:  # nothing slimmed: fixed channels
                outs = [_Layout([[None, t.shape[-1]]]) for t in call.outputs]
            else:
                outs = [out] * len(call.outputs)
            for tensor, layout in zip(call.outputs, outs):
                self.layouts[id(tensor)] = layout
            self.plans.append((layer, kind, ins, outs[0] if outs else None))

    def clone(self, layer, ins, call):
        return None

    def kernel(self, layer, ins, call):
        config = layer.get_config()
        filters = config.get("filters", config.get("units"))
        name = layer.name
        self.kernel_names.add(name)
        if name in self.output_kernels or name in self.fixed_layers:
            return _Layout([[None, filters]])
        if name in self.keep_ratio:
            blocks = self.expand(ins[0].blocks)
            if len(blocks) != 1 or blocks[0][0] is None or ins[0].repeat != 1:
                raise _unsupported(
                    layer, "keep_ratio needs a single slimmed input block (no "
                    "Concatenate or Flatten before it)"
                )
            parent, channels = blocks[0]
            ratio = math.gcd(filters, channels)
            self.new_group(name, filters)
            self.derived[name] = (parent, filters // ratio, channels // ratio)
            self.add_divisor(parent, channels // ratio)
            return _Layout([[name, filters]])
        return _Layout([[self.new_group(name, filters), filters]])

    def depthwise(self, layer, ins, call):
        multiplier = _depth_multiplier(layer)
        if not ins[0].slimmed:
            return None
        if multiplier != 1:
            raise _unsupported(
                layer, "depth_multiplier must be 1 on slimmed channels"
            )
        return ins[0]

    def grouped(self, layer, ins, call):
        if not ins[0].slimmed:
            return None
        blocks = self.expand(ins[0].blocks)
        if len(blocks) != 1 or ins[0].repeat != 1:
            raise _unsupported(
                layer, "a grouped convolution needs a single input block (no "
                "Concatenate or Flatten before it)"
            )
        if layer.name in self.output_kernels or layer.name in (
            self.fixed_layers
        ):
            raise _unsupported(
                layer, "a grouped convolution on slimmed channels cannot "
                "keep a fixed output count"
            )
        self.kernel_names.add(layer.name)
        parent, channels = blocks[0]
        per_in = channels // layer.groups
        per_out = layer.filters // layer.groups
        name = self.new_group(layer.name, layer.filters)
        if per_in == per_out:
            self.parent[name] = self.find(parent)
        else:
            self.derived[name] = (parent, per_out, per_in)
        self.add_divisor(parent, per_in)
        return _Layout([[name, layer.filters]])

    def same(self, layer, ins, call):
        return ins[0]

    # Layers that keep their input's channels as they are.
    batch_norm = layer_norm = reshape = per_channel = same

    def concatenate(self, layer, ins, call):
        if any(layout.repeat != 1 for layout in ins):
            raise _unsupported(layer, "its inputs were flattened")
        return _Layout([b for layout in ins for b in layout.blocks])

    def flatten(self, layer, ins, call):
        positions = int(np.prod(call.inputs[0].shape[1:-1]))
        return _Layout(ins[0].blocks, ins[0].repeat * positions)

    def elementwise(self, layer, ins, call):
        for layout, tensor in zip(ins, call.inputs):
            if not layout.slimmed and int(tensor.shape[-1]) != 1:
                raise _unsupported(
                    layer, "it combines slimmed channels with fixed-width "
                    "channels"
                )
        slimmed = [layout for layout in ins if layout.slimmed]
        for other in slimmed[1:]:
            self.tie(layer, slimmed[0], other)
        return slimmed[0]

    def add_divisor(self, group, divisor):
        self.divisors[group] = math.lcm(self.divisors.get(group, 1), divisor)

    # ------------------------------------------------------- results
    def leaf_groups(self):
        """`(base, derived, divisors)` keyed by final leaf groups."""
        leaves = {self.find(g) for g in self.parent}
        leaves = {g for g in leaves if g not in self.parts}
        base = {g: self.size[g] for g in leaves}
        derived = {}
        for group, (parent, numerator, denominator) in self.derived.items():
            parent = self.find(parent)
            if parent in self.parts or self.find(group) in self.parts:
                raise ValueError(
                    f"Channel group '{group}' follows '{parent}', which is "
                    "split across a concatenation; slim() cannot keep both."
                )
            entry = (parent, numerator, denominator)
            if derived.setdefault(self.find(group), entry) != entry:
                raise ValueError(
                    f"Channel group '{self.find(group)}' would follow two "
                    "different layers' widths; tie it to one of them only."
                )
        divisors = {}
        for group, divisor in self.divisors.items():
            for leaf, _ in self.expand([[group, 0]]):
                divisors[leaf] = math.lcm(divisors.get(leaf, 1), divisor)
        return base, derived, divisors


def _offsets(blocks):
    offsets = [0]
    for _, size in blocks:
        offsets.append(offsets[-1] + size)
    return offsets


def _unsupported(layer, why):
    return ValueError(
        f"Layer '{layer.name}' ({type(layer).__name__}) cannot be "
        f"slimmed: {why}. slim() supports {_SUPPORTED}; layers before "
        "the first convolution (fixed input channels) may be anything. "
        "For a layer of your own, declare how it treats channels with "
        "keras_slim.register_layer(its class, 'elementwise' or "
        "'per_channel'), or replace it."
    )


def _depth_multiplier(layer):
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return layer.depth_multiplier
    return layer.filters // layer.groups  # Conv2D(groups=channels)


def _kind(layer, ins, call):
    """What `slim()` does with a layer: the name of its handler."""
    slimmed = any(layout.slimmed for layout in ins)
    cls = type(layer)
    if cls is keras.layers.Conv2D and layer.groups != 1:
        channels = int(call.inputs[0].shape[-1])
        return "depthwise" if layer.groups == channels else "grouped"
    if cls in (keras.layers.Conv1D, keras.layers.Conv3D) and layer.groups != 1:
        raise _unsupported(
            layer, f"a grouped {cls.__name__} (groups={layer.groups}); only "
            "Conv2D may be grouped"
        )
    if cls in _SLIM_KERNELS:
        return "kernel"
    if isinstance(layer, _UNSUPPORTED_KERNELS):
        raise _unsupported(
            layer, "transposed and 1D depthwise/separable convolutions are "
            "not slimmable"
        )
    if isinstance(layer, tuple(_SLIM_KERNELS)):
        raise _unsupported(
            layer, "only the stock Conv1D/2D/3D, SeparableConv2D and Dense "
            "classes (a subclass may compute something else)"
        )
    if cls is keras.layers.DepthwiseConv2D:
        return "depthwise"
    if not slimmed:
        return "clone"
    if cls is keras.layers.BatchNormalization:
        if layer.axis not in (-1, len(call.inputs[0].shape) - 1):
            raise _unsupported(layer, "BN must normalise the last axis")
        if layer.get_config().get("renorm"):
            raise _unsupported(
                layer, "batch renormalization (renorm=True) is not supported"
            )
        if compat.keras_mask(call.inputs[0]) is not None:
            raise _unsupported(layer, "its input carries a mask")
        return "batch_norm"
    if cls is keras.layers.LayerNormalization:
        axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [
            layer.axis]
        if list(axis) not in ([-1], [len(call.inputs[0].shape) - 1]):
            raise _unsupported(
                layer, "LayerNormalization must normalise the last "
                "(channels) axis alone"
            )
        return "layer_norm"
    if isinstance(layer, keras.layers.Concatenate):
        if layer.axis not in (-1, len(call.inputs[0].shape) - 1):
            raise _unsupported(layer, "only channel-axis concatenation")
        return "concatenate"
    if isinstance(layer, keras.layers.Flatten):
        return "flatten"
    if isinstance(layer, keras.layers.Reshape):
        target = tuple(layer.target_shape)
        spatial = tuple(call.inputs[0].shape[1:-1])
        if not (
            ins[0].repeat == 1
            and target
            and target[-1] in (ins[0].channels, -1)
            and (-1 in target[:-1]
                 or int(np.prod(target[:-1])) == int(np.prod(spatial)))
        ):
            raise _unsupported(
                layer, "a Reshape of slimmed channels must keep them on the "
                "last axis (e.g. (C,) -> (1, 1, C))"
            )
        return "reshape"
    rule = registry.rule_for(layer)
    if rule is None:
        raise _unsupported(layer, "it may change or mix channels")
    if rule.kind == registry.PER_CHANNEL:
        return "per_channel"
    for value in keras.tree.flatten((call.args, call.kwargs)):
        if (not isinstance(value, keras.KerasTensor)
                and hasattr(value, "shape") and np.size(value) > 1):
            raise _unsupported(
                layer, "it combines slimmed channels with a constant array "
                f"of shape {tuple(value.shape)}"
            )
    return "elementwise"


class _Builder:
    """Replays the graph with slimmable layers, from an `_Analysis`."""

    def __init__(self, analysis, *, max_width, widths, divisor, min_channels,
                 triangular, switchable_bn, bn_momentum, synchronized_bn):
        self.analysis = analysis
        self.widths = widths
        self.triangular = triangular
        self.switchable_bn = switchable_bn
        self.bn_momentum = bn_momentum
        self.synchronized_bn = synchronized_bn
        self.base, self.derived, self.divisors = analysis.leaf_groups()
        self.full = _full_channels(
            self.base, self.derived, self.divisors, max_width, divisor,
            min_channels,
        )
        self.step = 0
        self.created = {}  # original layer name -> new layer
        # (original layer, new layer, input origin[, output origin])
        self.copies = []
        self.input_groups = {}  # triangular layer name -> its input group

    def layout(self, layout):
        """`(blocks with full counts, origin, input_layout or None)`."""
        blocks = [
            [g, self.full[g] if g is not None else n]
            for g, n in self.analysis.expand(layout.blocks)
        ]
        sizes = self.analysis.expand(layout.blocks)
        width = sum(full for _, full in blocks)
        origin = np.concatenate([
            np.concatenate([
                offset + np.arange(size)
                for (_, size), offset in zip(sizes, _offsets(blocks)[:-1])
            ]) + r * width
            for r in range(layout.repeat)
        ]) if blocks else np.zeros(0, "int64")
        prefix = layout.repeat == 1 and len(blocks) == 1
        spec = None if prefix else {"blocks": blocks, "repeat": layout.repeat}
        return blocks, origin.astype("int64"), spec

    def call(self, layer, *args, **kwargs):
        """`call_function` of the replay: converts and calls one layer."""
        original, kind, ins, out = self.analysis.plans[self.step]
        self.step += 1
        if original is not layer:
            raise RuntimeError(
                "slim(): the graph was visited in a different order twice "
                f"({original.name} vs {layer.name})."
            )
        if not isinstance(layer, keras.layers.Layer):
            return layer(*args, **kwargs)  # a stateless keras.ops operation
        if layer.name in self.created:
            return self.created[layer.name](*args, **kwargs)
        new = getattr(self, kind)(layer, ins, out)
        self.created[layer.name] = new
        return new(*args, **kwargs)

    def clone(self, layer, ins, out):
        new = type(layer).from_config(layer.get_config())
        self.copies.append((layer, new, None))
        return new

    flatten = concatenate = elementwise = clone

    def reshape(self, layer, ins, out):
        target = tuple(layer.target_shape)
        config = dict(layer.get_config(), target_shape=target[:-1] + (-1,))
        return type(layer).from_config(config)

    def kernel(self, layer, ins, out):
        config = layer.get_config()
        _, origin, input_layout = self.layout(ins[0])
        out_blocks, out_origin, _ = self.layout(out)
        slim_out = out.slimmed
        filters = sum(full for _, full in out_blocks)
        kwargs = dict(
            slim_in=ins[0].slimmed,
            slim_out=slim_out,
            channel_group=out_blocks[0][0] if len(out_blocks) == 1 else None,
            input_layout=input_layout,
            output_layout=(
                {"blocks": out_blocks} if slim_out and len(out_blocks) > 1
                else None
            ),
        )
        tri = (bool(self.triangular) and ins[0].slimmed and slim_out
               and input_layout is None and kwargs["output_layout"] is None)
        if tri:
            self.input_groups[layer.name] = self.analysis.expand(
                ins[0].blocks)[0][0]
        size = "units" if type(layer) is keras.layers.Dense else "filters"
        new = _SLIM_KERNELS[type(layer)](
            **dict(config, **{size: filters}), triangular=tri, **kwargs
        )
        self.copies.append((layer, new, origin, out_origin))
        return new

    def grouped(self, layer, ins, out):
        if not ins[0].slimmed:
            return self.clone(layer, ins, out)
        (group, full), = self.layout(out)[0]
        (_, in_full), = self.layout(ins[0])[0]
        config = dict(layer.get_config(), filters=full,
                      groups=in_full * layer.groups // ins[0].channels)
        new = SlimConv2D(**config, slim_in=True, slim_out=True,
                         channel_group=group)
        self.copies.append((layer, new, None))
        return new

    def depthwise(self, layer, ins, out):
        _, origin, input_layout = self.layout(ins[0])
        config = layer.get_config()
        if type(layer) is keras.layers.Conv2D:
            # Depthwise written as a grouped convolution (ConvNeXt).
            config = {
                k: v for k, v in config.items()
                if k not in ("filters", "groups", "kernel_initializer",
                             "kernel_regularizer", "kernel_constraint")
            }
            config["depth_multiplier"] = layer.filters // layer.groups
        new = SlimDepthwiseConv2D(**config, input_layout=input_layout)
        self.copies.append((layer, new, origin))
        return new

    def batch_norm(self, layer, ins, out):
        _, origin, input_layout = self.layout(ins[0])
        config = dict(layer.get_config(), axis=-1)
        if self.bn_momentum is not None:
            config["momentum"] = self.bn_momentum
        if self.synchronized_bn is not None:
            config["synchronized"] = self.synchronized_bn
        if self.switchable_bn:
            new = SwitchableBatchNormalization(
                num_widths=len(self.widths), input_layout=input_layout,
                **config,
            )
        else:
            new = SlimBatchNormalization(input_layout=input_layout, **config)
        self.copies.append((layer, new, origin))
        return new

    def layer_norm(self, layer, ins, out):
        _, origin, input_layout = self.layout(ins[0])
        config = dict(layer.get_config(), axis=-1)
        new = SlimLayerNormalization(input_layout=input_layout, **config)
        self.copies.append((layer, new, origin))
        return new

    def per_channel(self, layer, ins, out):
        blocks, origin, input_layout = self.layout(ins[0])
        config = layer.get_config()
        rule = registry.rule_for(layer)
        if rule.config_for_channels is not None:
            width = sum(full for _, full in blocks) * ins[0].repeat
            config = rule.config_for_channels(config, width)
        new = SlimChannelwise(type(layer).from_config(config),
                              input_layout=input_layout, name=layer.name)
        self.copies.append((layer, new, origin))
        return new


def _full_channels(base, derived, divisors, max_width, divisor, min_channels):
    """Channels each leaf group is built with: its count at the max width."""
    plan = width_lib.ChannelPlan(
        list(base), base, {g: 1 << 30 for g in base}, divisor=divisor,
        min_channels=min_channels, group_divisors=divisors, derived=derived,
    )
    return dict(zip(plan.groups, plan.counts(max_width).tolist()))


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
    fixed_layers=(),
    keep_ratio=(),
):
    """Turns a Keras model into a `SlimmableModel`, keeping its weights.

    Every `Conv2D`, `DepthwiseConv2D`, `SeparableConv2D`, `Dense`,
    `BatchNormalization` and `LayerNormalization` is replaced by its
    `keras_slim.layers` counterpart, built at the max width, with the
    original weights at the positions of the original channels, so width
    1.0 computes what the original model computed (for every max width).
    The model's input channels and its outputs are never slimmed. Channels
    combined by element-wise layers (`Add`, `Multiply`, element-wise
    `keras.ops`, squeeze-and-excitation) are tied to one count;
    `Concatenate`, `Flatten` and channel-preserving `Reshape` are followed
    exactly. How other layers treat channels is declared with
    `keras_slim.register_layer` (see `keras_slim.registry`).

    Frozen layers stay frozen: a `BatchNormalization` with
    `trainable=False` runs in inference mode during training, as in Keras.

    Args:
        model: A built Sequential or functional Keras model (nested models
            are expanded).
        width_range: `(min_width, max_width)` for a universally slimmable
            network (US-Net); max may exceed 1.0.
        widths: A fixed list of widths to train instead (S-Net). With
            switchable BN (the default without `triangular`) only these
            widths run; with a shared BN (k-width Any-Width Networks) they
            are the training widths and any width in their range runs.
            May be configurations (dicts layer name -> channels, e.g.
            searched by `keras_slim.search.autoslim`): `width_range`'s max
            then sets the layers' channels.
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
        fixed_layers: Names of conv/dense layers kept at their full channel
            count at every width (the official US-MobileNetV2 keeps its
            1280-channel last convolution).
        keep_ratio: Names of conv/dense layers whose output channels keep
            their ratio to their input channels at every width (the
            official US-MobileNetV2 rounds an expansion layer as
            `6 * make_divisible(C * w)`, not `make_divisible(6 * C * w)`).

    Returns:
        A `keras_slim.SlimmableModel`.

    Raises:
        ValueError: for a layer that cannot be slimmed, naming it, or an
            unknown name in `fixed_layers` / `keep_ratio`.

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
    if widths is not None and width_lib.are_configs(widths) and triangular:
        raise ValueError(
            "triangular=True needs numeric widths (its staircase follows "
            "the width rule); configurations (dicts) cannot be triangular."
        )
    if widths is not None and not width_lib.are_configs(widths):
        widths = sorted(
            width_lib.validate_width(w, (1e-9, float("inf"))) for w in widths
        )
        width_range = (widths[0], widths[-1])
    width_range = width_lib.validate_width_range(width_range)
    if width_range[1] < 1.0 - 1e-9:
        raise ValueError(
            "slim() builds every layer at the max width and keeps the "
            "original weights, so the max width must be at least 1.0 (the "
            f"original network); got a max width of {width_range[1]}. Add "
            "1.0 to `widths` (or to `width_range`), or pass narrower "
            "networks as configurations (dicts layer name -> channels)."
        )
    if switchable_bn is None:
        switchable_bn = widths is not None and not triangular
    if switchable_bn and widths is None:
        raise ValueError(
            "switchable_bn=True needs a fixed `widths` list (S-Net): private "
            "BN statistics exist only for listed widths."
        )
    functional = graph.as_functional(model)
    fixed_layers = _names(fixed_layers, "fixed_layers")
    keep_ratio = _names(keep_ratio, "keep_ratio")
    # Every option, kept on the model (`SlimmableModel.slim_options`) so
    # that whatever rebuilds it (add_exits, the trainers) slims the same way.
    options = {
        "width_range": list(width_range),
        "widths": None if widths is None else list(widths),
        "divisor": int(divisor),
        "min_channels": min_channels,
        "triangular": bool(triangular),
        "switchable_bn": bool(switchable_bn),
        "bn_momentum": bn_momentum,
        "synchronized_bn": synchronized_bn,
        "fixed_layers": fixed_layers,
        "keep_ratio": keep_ratio,
    }
    calls, traced = graph.trace(functional)
    output_kernels = _output_kernels(calls, traced)
    analysis = _Analysis(output_kernels, fixed_layers, keep_ratio)
    analysis.run(calls)
    for option, names in (("fixed_layers", fixed_layers),
                          ("keep_ratio", keep_ratio)):
        unknown = sorted(set(names) - analysis.kernel_names)
        if unknown:
            raise ValueError(
                f"`{option}` names {unknown}, which are not Conv2D, "
                "SeparableConv2D or Dense layers of the model."
            )
    builder = _Builder(
        analysis,
        max_width=width_range[1],
        widths=widths,
        divisor=divisor,
        min_channels=min_channels,
        triangular=triangular,
        switchable_bn=switchable_bn,
        bn_momentum=bn_momentum,
        synchronized_bn=synchronized_bn,
    )
    network = graph.replay(functional, builder.call)
    for copy in builder.copies:
        _copy_weights(*copy)
    slim_model = SlimmableModel(
        network,
        width_range=width_range,
        widths=widths,
        divisor=divisor,
        min_channels=min_channels,
        outputs_logits=_outputs_logits(functional, output_kernels),
        base_channels=builder.base,
        derived_groups=builder.derived,
        group_divisors=builder.divisors,
        slim_options=options,
        name=f"slim_{model.name}",
    )
    _check_something_slims(slim_model, analysis, output_kernels)
    if triangular:
        set_staircases(slim_model, builder.input_groups)
    return slim_model


def _check_something_slims(model, analysis, output_kernels):
    """Raises if no channel count would change between the min and max width.

    A model whose only conv/dense layer is its classifier (Flatten -> Dense,
    LSTM -> Dense) would otherwise come back "slimmable" with a `set_width`
    that changes nothing.
    """
    low, high = model.width_range
    if model.widths is not None:  # numbers or searched configurations
        low, high = model.widths[0], model.widths[-1]
    if model.channel_groups and (
        low == high or model.channels_for(low) != model.channels_for(high)
    ):
        return
    kept = sorted(output_kernels | set(analysis.fixed_layers))
    others = sorted(
        f"'{layer.name}' ({type(layer).__name__})"
        for layer, kind, _, _ in analysis.plans
        if kind == "clone" and isinstance(layer, keras.layers.Layer)
        and layer.weights
    )
    why = (
        f"its conv/dense layers {kept} keep their channels (the model's "
        "outputs and `fixed_layers` are never slimmed)" if kept
        else "it has no conv/dense layer"
    )
    if model.channel_groups:
        why = (
            f"every channel count stays the same between widths {low} and "
            f"{high} (min_channels / divisor too large for these layers)"
        )
    raise ValueError(
        f"slim(): nothing in model '{model.name[len('slim_'):]}' would "
        f"change with the width: {why}."
        + (f" Layers left as they are: {', '.join(others)}." if others else "")
        + f" slim() slims {_SUPPORTED} between the input and the outputs."
    )


def _names(names, option):
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"`{option}` must be a list of layer names; got "
                         f"{names!r}.")
    return names


def set_staircases(model, input_groups):
    """Sets the exact staircase masks of a model's triangular layers.

    Args:
        model: A `SlimmableModel`.
        input_groups: dict triangular layer name -> channel group of its
            input.
    """
    plan = model.channel_plan

    def counts_fn(group):
        i = plan.index[group]
        return lambda widths: plan.counts(widths)[..., i]

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


def _outputs_logits(model, output_kernels):
    layers = {layer.name: layer for layer in graph.all_layers(model)}
    for name in output_kernels:
        activation = getattr(layers.get(name), "activation", None)
        if activation is not None and activation.__name__ == "softmax":
            return False
    last = model.layers[-1]
    return not (
        isinstance(last, keras.layers.Softmax)
        or getattr(getattr(last, "activation", None), "__name__", "") == "softmax"
    )


# ---------------------------------------------------------- weight copies
def _numpy(variable):
    return np.array(keras.ops.convert_to_numpy(variable))


def _place(target, source, positions=None):
    """Copies `source` into `target` at the original channels' positions.

    `positions` maps an axis of `source` to the indices of `target` its
    entries go to; every other axis is a leading slice. Returns the value.
    """
    value = _numpy(target)
    index = [np.arange(n) for n in source.shape]
    for axis, where in (positions or {}).items():
        index[axis] = np.asarray(where)
    value[np.ix_(*index)] = source
    return value


def _copy_weights(original, new, origin, out_origin=None):
    """Copies `original`'s weights into the layer that replaces it.

    `origin` (and for conv/dense layers `out_origin`) give where each
    original input (output) channel sits in the new layer; None is a
    leading slice.
    """
    outputs = {} if out_origin is None else {-1: out_origin}
    if isinstance(new, (SlimConv1D, SlimConv2D, SlimConv3D, SlimDense)):
        kernel = _numpy(original.kernel)
        if getattr(new, "groups", 1) != 1:
            new.kernel.assign(_place(new.kernel, kernel))
        else:
            new.kernel.assign(_place(new.kernel, kernel,
                                     {-2: origin, **outputs}))
    elif isinstance(new, SlimSeparableConv2D):
        depthwise = _numpy(original.depthwise_kernel)
        multiplier = depthwise.shape[-1]
        new.depthwise_kernel.assign(
            _place(new.depthwise_kernel, depthwise, {2: origin})
        )
        rows = (origin[:, None] * multiplier
                + np.arange(multiplier)[None, :]).reshape(-1)
        new.pointwise_kernel.assign(_place(
            new.pointwise_kernel, _numpy(original.pointwise_kernel),
            {2: rows, **outputs},
        ))
    elif isinstance(new, SlimDepthwiseConv2D):
        # A depthwise kernel is (k, k, channels, multiplier); that of a
        # Conv2D(groups=channels) it replaces (ConvNeXt) is (k, k, 1,
        # channels * multiplier): the same weights in the same order.
        kernel = _numpy(original.kernel)
        kernel = kernel.reshape(kernel.shape[:2] + (len(origin), -1))
        new.kernel.assign(_place(new.kernel, kernel, {2: origin}))
        if original.use_bias:
            _assign_bias(new, _numpy(original.bias), origin)
    elif isinstance(new, (SlimBatchNormalization, SwitchableBatchNormalization,
                          SlimLayerNormalization)):
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            source = getattr(original, name, None)
            target = getattr(new, name, None)
            if source is None or target is None:
                continue
            value = _numpy(target)
            value[..., origin] = _numpy(source)  # every row of an S-Net BN
            target.assign(value)
    elif isinstance(new, SlimChannelwise):
        for source, target in zip(original.weights, new.layer.weights):
            source = _numpy(source)
            if source.ndim and source.shape[-1] == len(origin):
                target.assign(_place(target, source,
                                     {source.ndim - 1: origin}))
            else:
                target.assign(source)
    else:
        for source, target in zip(original.weights, new.weights):
            target.assign(_numpy(source))
    if isinstance(new, SlimKernelMixin) and original.use_bias:
        new.bias.assign(_place(new.bias, _numpy(original.bias),
                               {0: out_origin} if outputs else None))


def _assign_bias(layer, bias, origin):
    """A depthwise bias, `(channels * multiplier,)`, at the origin channels."""
    full = layer.kernel.shape[-2]
    value = _numpy(layer.bias).reshape(full, -1)
    value[origin] = bias.reshape(len(origin), -1)
    layer.bias.assign(value.reshape(-1))
