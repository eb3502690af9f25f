"""Slimmable convolution and dense layers.

Each layer owns its kernel at full width and, in `call`, uses the leading
slice that the active width selects: input channels follow the incoming
tensor, output channels follow the active width (see `active_width`).
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_slim.layers import scope as aw


def _check_input_layout(layout):
    if layout is None:
        return None
    if not isinstance(layout, dict) or "blocks" not in layout:
        raise ValueError(
            "`input_layout` must be None or a dict with 'blocks' (a list of "
            f"[group, channels]) and optionally 'repeat'; got {layout!r}."
        )
    blocks = [[g, int(c)] for g, c in layout["blocks"]]
    return {"blocks": blocks, "repeat": int(layout.get("repeat", 1))}


def _check_channels_last(layer):
    if layer.data_format != "channels_last":
        raise ValueError(
            f"{type(layer).__name__} '{layer.name}' supports data_format="
            f"'channels_last' only; got '{layer.data_format}'."
        )


def _checked_channels(layer, inputs, full):
    """The input's channel count (a tensor when only known at run time),
    checked against the `full` count `layer` was built for."""
    count = inputs.shape[-1]
    if count is None:
        return ops.shape(inputs)[-1]
    if count > full:
        raise ValueError(
            f"Layer '{layer.name}' was built for at most {full} input "
            f"channels; got input shape {tuple(inputs.shape)}."
        )
    return count


def _is_static(value, expected):
    """Whether `value` is a Python int equal to `expected` (no slicing needed)."""
    return isinstance(value, (int, np.integer)) and int(value) == expected


def proportional_staircase(in_channels, out_channels):
    """Input count each output channel may read, proportional rule.

    Output channel `j` reads input channels `[0, ceil((j + 1) * in / out))`:
    the plain lower-triangular mask for square kernels. `SlimmableModel`
    replaces it with the staircase of its own width rule, which is exact for
    every width of the model.
    """
    j = np.arange(out_channels)
    return np.ceil((j + 1) * in_channels / out_channels).astype("int64")


def staircase_mask(input_counts):
    """A `(in_channels, out_channels)` 0/1 mask from per-output read limits.

    Args:
        input_counts: length-`out_channels` array: output channel `j` reads
            input channels `[0, input_counts[j])`.
    """
    return (
        np.arange(int(np.max(input_counts)))[:, None]
        < np.asarray(input_counts)[None, :]
    ).astype("float32")


class SlimKernelMixin:
    """Shared logic of layers whose kernel is `(..., in, out)`."""

    def _init_slim(
        self, slim_in, slim_out, channel_group, input_layout, triangular,
        output_layout=None,
    ):
        self.slim_in = bool(slim_in)
        self.slim_out = bool(slim_out)
        self.channel_group = channel_group or self.name
        self.input_layout = _check_input_layout(input_layout)
        self.output_layout = _check_input_layout(output_layout)
        self.triangular = bool(triangular)
        if self.triangular and (
            self.input_layout is not None or self.output_layout is not None
        ):
            raise ValueError(
                f"Layer '{self.name}': triangular=True needs its input and "
                "output to be single slimmable blocks (no Concatenate or "
                "Flatten before it, no concatenation it is added to)."
            )
        if self.output_layout is not None and getattr(self, "groups", 1) != 1:
            raise ValueError(
                f"Layer '{self.name}': a grouped convolution cannot have an "
                "output layout."
            )

    def _build_mask(self, in_channels, out_channels):
        if not self.triangular:
            self.triangular_mask = None
            return
        staircase = proportional_staircase(in_channels, out_channels)
        self.triangular_mask = self.add_weight(
            name="triangular_mask",
            shape=(in_channels, out_channels),
            initializer=keras.initializers.Constant(
                staircase_mask(staircase)[:in_channels]
            ),
            trainable=False,
        )

    def set_staircase(self, input_counts):
        """Sets the triangular mask from per-output input limits."""
        mask = staircase_mask(input_counts)
        full_in = self.triangular_mask.shape[0]
        padded = np.zeros(self.triangular_mask.shape, "float32")
        padded[: min(full_in, mask.shape[0])] = mask[:full_in]
        self.triangular_mask.assign(padded)

    # Keras' Conv2D/Dense save only kernel and bias: add the mask.
    def save_own_variables(self, store):
        super().save_own_variables(store)
        if self.built and self.triangular_mask is not None:
            store["triangular_mask"] = self.triangular_mask

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if self.built and self.triangular_mask is not None:
            self.triangular_mask.assign(store["triangular_mask"])

    def _slim_config(self):
        return {
            "slim_in": self.slim_in,
            "slim_out": self.slim_out,
            "channel_group": self.channel_group,
            "input_layout": self.input_layout,
            "output_layout": self.output_layout,
            "triangular": self.triangular,
        }

    @property
    def output_groups(self):
        """`{group: full channels}` of the channel groups this layer makes."""
        if not self.slim_out:
            return {}
        full = self.filters if hasattr(self, "filters") else self.units
        if self.output_layout is None:
            return {self.channel_group: full}
        return {
            group: count for group, count in self.output_layout["blocks"]
            if group is not None
        }

    def _active_out(self, full_out):
        """`(count, indices)` of the active outputs; indices None = prefix."""
        if not self.slim_out:
            return full_out, None
        if self.output_layout is not None:
            # Outputs tied to a concatenation (e.g. NASNet's and
            # Inception-ResNet's residual branches): one block per
            # concatenated group, each keeping its own active prefix.
            indices = aw.input_channel_indices(self.output_layout, full_out)
            count = (len(indices) if isinstance(indices, np.ndarray)
                     else tf.size(indices))
            return count, indices
        return aw.active_channels(self.channel_group, full_out), None

    def _static_out(self, full_out):
        """Output channels a symbolic call reports: the active count when
        the width is known in Python, else (run-time widths) the full one."""
        count, _ = self._active_out(full_out)
        if isinstance(count, (int, np.integer)):
            return int(count)
        return full_out

    def _check_inputs(self, inputs, full_in):
        full_in = full_in * getattr(self, "groups", 1)
        if not self.slim_in and inputs.shape[-1] not in (None, full_in):
            raise ValueError(
                f"Layer '{self.name}' expects inputs with exactly {full_in} "
                f"channels (its input side is not slimmable); got input "
                f"shape {tuple(inputs.shape)}."
            )
        return _checked_channels(self, inputs, full_in)

    def _slice_kernel(self, inputs, kernel, full_in, full_out):
        """Returns `(kernel, out_channels)` for the active width."""
        in_channels = self._check_inputs(inputs, full_in)
        out_channels, out_indices = self._active_out(full_out)
        mask = self.triangular_mask
        if getattr(self, "groups", 1) != 1:
            # A grouped kernel is (..., in per group, out): fewer input
            # channels are fewer whole groups, which the convolution infers
            # from the input; only the outputs are sliced.
            if not _is_static(out_channels, full_out):
                kernel = kernel[..., :out_channels]
        elif self.input_layout is not None:
            indices = aw.input_channel_indices(self.input_layout, full_in)
            kernel = tf.gather(kernel, indices, axis=kernel.ndim - 2)
            if out_indices is None:
                kernel = kernel[..., :out_channels]
        elif out_indices is not None:
            spatial = (slice(None),) * (len(kernel.shape) - 2)
            kernel = kernel[spatial + (slice(None, in_channels),)]
        elif not (_is_static(in_channels, full_in) and _is_static(out_channels, full_out)):
            # Two slices keep a static input count static: Keras' TF conv
            # runs an XLA-compiled op (which tf2onnx cannot convert) when
            # it cannot match the kernel's input dim to the inputs'. No
            # `...` spanning zero axes (Dense): tf2onnx 1.17 turns that into
            # an ONNX Slice with duplicate axes, which onnxruntime rejects.
            spatial = (slice(None),) * (len(kernel.shape) - 2)
            kernel = kernel[spatial + (slice(None, in_channels),)]
            kernel = kernel[..., :out_channels]
            if mask is not None:
                mask = mask[:in_channels][:, :out_channels]
        if out_indices is not None:
            kernel = tf.gather(kernel, out_indices, axis=kernel.ndim - 1)
        if mask is not None:
            kernel = kernel * ops.cast(mask, kernel.dtype)
        return kernel, (out_channels, out_indices)

    def _add_bias_and_activate(self, outputs, selection):
        out_channels, out_indices = selection
        if self.use_bias:
            if out_indices is not None:
                bias = tf.gather(self.bias, out_indices)
            elif _is_static(out_channels, self.bias.shape[0]):
                bias = self.bias
            else:
                bias = self.bias[:out_channels]
            outputs = ops.add(outputs, bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


class _SlimConv(SlimKernelMixin):
    """A stock N-D convolution (the next base class) with a slimmable kernel."""

    def __init__(
        self,
        filters,
        kernel_size,
        slim_in=True,
        slim_out=True,
        channel_group=None,
        input_layout=None,
        triangular=False,
        output_layout=None,
        **kwargs,
    ):
        super().__init__(filters, kernel_size, **kwargs)
        name = type(self).__name__
        if self.groups != 1 and (triangular or input_layout is not None):
            raise ValueError(
                f"{name} '{self.name}': a grouped convolution (groups="
                f"{self.groups}) cannot be triangular or read a Concatenate/"
                "Flatten input layout."
            )
        _check_channels_last(self)
        self._init_slim(
            slim_in, slim_out, channel_group, input_layout, triangular,
            output_layout,
        )

    def build(self, input_shape):
        super().build(input_shape)
        # Inputs may carry fewer channels than the kernel was built for.
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2)
        self._build_mask(input_shape[-1], self.filters)

    def call(self, inputs):
        kernel, out_channels = self._slice_kernel(
            inputs, self.kernel, self.kernel.shape[-2], self.filters
        )
        if self.padding == "causal":  # Conv1D only, as keras.layers.Conv1D
            inputs = ops.pad(inputs, self._compute_causal_padding())
            outputs = ops.conv(
                inputs, kernel, strides=list(self.strides), padding="valid",
                dilation_rate=self.dilation_rate, data_format=self.data_format,
            )
        else:
            outputs = self.convolution_op(inputs, kernel)
        return self._add_bias_and_activate(outputs, out_channels)

    def compute_output_shape(self, input_shape):
        shape = super().compute_output_shape(input_shape)
        return shape[:-1] + (self._static_out(self.filters),)

    def get_config(self):
        return {**super().get_config(), **self._slim_config()}


@keras.saving.register_keras_serializable(package="keras_slim")
class SlimConv2D(_SlimConv, keras.layers.Conv2D):
    """2D convolution whose input and output channels can be slimmed.

    The kernel is built at full width (from the input shape at build time);
    each call uses the leading `in x out` slice, where `in` is the number of
    channels of the incoming tensor and `out` is the active channel count of
    this layer's `channel_group` (full width outside a `SlimmableModel`).

    Args:
        filters: Output channels at full width.
        kernel_size, strides, padding, ...: as `keras.layers.Conv2D`.
        slim_in: Whether the input channels may be fewer than at build time.
            False for a network's first layer: a wrong channel count then
            raises instead of being sliced.
        slim_out: Whether the output channels follow the active width. False
            for a classifier's output.
        channel_group: Name under which the active width stores this layer's
            output count. Layers whose outputs are added together share one
            group. Defaults to the layer name.
        input_layout: For inputs assembled by `Concatenate`: which channel
            groups the input is made of (see `active_width`).
        output_layout: Instead of `channel_group`, the channel groups the
            outputs are made of, when they are added to a concatenation.
        triangular: Any-Width Networks: output channel `j` only reads input
            channels that are active whenever `j` is, so activations do not
            depend on the width.
        **kwargs: Passed to `keras.layers.Conv2D`. With `groups > 1` the
            channels per group stay fixed: a narrower input is fewer whole
            groups, and the output keeps `filters / groups` channels per
            active group.

    Call arguments:
        inputs: A 4D tensor, channels last, with at most the build-time
            number of channels.

    Symbolic calls (`compute_output_shape`) report the active width's
    channels when it is a Python int (a width set in Python), the full
    width's when the width is only known at run time.

    Example:

    >>> layer = SlimConv2D(32, 3, padding="same", channel_group="c1")
    >>> y = layer(np.zeros((1, 8, 8, 16)))  # full width: 32 channels
    >>> from keras_slim.layers import scope as aw
    >>> with aw.active_width(aw.ActiveWidth(channels={"c1": 8})):
    ...     y = layer(np.zeros((1, 8, 8, 4)))  # 4 -> 8 channels

    Reference:
        Yu et al., Slimmable Neural Networks, ICLR 2019
        (https://arxiv.org/abs/1812.08928).
    """


@keras.saving.register_keras_serializable(package="keras_slim")
class SlimConv1D(_SlimConv, keras.layers.Conv1D):
    """1D convolution whose input and output channels can be slimmed.

    As `SlimConv2D`, for sequences `(batch, steps, channels)`; `padding=
    "causal"` works as in `keras.layers.Conv1D`.

    Example:

    >>> layer = SlimConv1D(32, 3, padding="causal", channel_group="c1")
    >>> y = layer(np.zeros((1, 20, 16)))  # full width: 32 channels
    >>> from keras_slim.layers import scope as aw
    >>> with aw.active_width(aw.ActiveWidth(channels={"c1": 8})):
    ...     y = layer(np.zeros((1, 20, 4)))  # 4 -> 8 channels
    """


@keras.saving.register_keras_serializable(package="keras_slim")
class SlimConv3D(_SlimConv, keras.layers.Conv3D):
    """3D convolution whose input and output channels can be slimmed.

    As `SlimConv2D`, for volumes `(batch, depth, height, width, channels)`.

    Example:

    >>> layer = SlimConv3D(16, 3, padding="same", channel_group="c1")
    >>> y = layer(np.zeros((1, 4, 8, 8, 8)))  # full width: 16 channels
    >>> from keras_slim.layers import scope as aw
    >>> with aw.active_width(aw.ActiveWidth(channels={"c1": 4})):
    ...     y = layer(np.zeros((1, 4, 8, 8, 2)))  # 2 -> 4 channels
    """


@keras.saving.register_keras_serializable(package="keras_slim")
class SlimDense(SlimKernelMixin, keras.layers.Dense):
    """Densely-connected layer whose input and output units can be slimmed.

    Args:
        units: Output units at full width.
        slim_in, slim_out, channel_group, input_layout, triangular: see
            `SlimConv2D`. A classifier uses `slim_out=False`; a dense layer
            after `Flatten` uses `input_layout` with `repeat` = the number of
            spatial positions.
        **kwargs: Passed to `keras.layers.Dense`.

    Example:

    >>> head = SlimDense(10, slim_out=False)
    >>> logits = head(np.zeros((2, 64)))
    >>> logits = head(np.zeros((2, 16)))  # a slimmed feature vector
    """

    def __init__(
        self,
        units,
        slim_in=True,
        slim_out=True,
        channel_group=None,
        input_layout=None,
        triangular=False,
        output_layout=None,
        **kwargs,
    ):
        super().__init__(units, **kwargs)
        self._init_slim(
            slim_in, slim_out, channel_group, input_layout, triangular,
            output_layout,
        )

    def build(self, input_shape):
        super().build(input_shape)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self._build_mask(input_shape[-1], self.units)

    def call(self, inputs, training=None):
        kernel, out_channels = self._slice_kernel(
            inputs, self.kernel, self.kernel.shape[0], self.units
        )
        outputs = ops.matmul(inputs, kernel)
        return self._add_bias_and_activate(outputs, out_channels)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self._static_out(self.units),)

    def get_config(self):
        return {**super().get_config(), **self._slim_config()}


@keras.saving.register_keras_serializable(package="keras_slim")
class SlimDepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """Depthwise convolution that follows the channels of its input.

    Each input channel has its own filter, so the active channels are simply
    those of the incoming tensor; the layer has no width of its own.

    Args:
        kernel_size, strides, padding, depth_multiplier, ...: as
            `keras.layers.DepthwiseConv2D`.
        input_layout: See `SlimConv2D` (inputs assembled by `Concatenate`).

    Example:

    >>> layer = SlimDepthwiseConv2D(3, padding="same")
    >>> y = layer(np.zeros((1, 8, 8, 32)))  # builds the full kernel
    >>> y = layer(np.zeros((1, 8, 8, 12)))  # uses the first 12 filters
    """

    def __init__(self, kernel_size, input_layout=None, **kwargs):
        super().__init__(kernel_size, **kwargs)
        _check_channels_last(self)
        self.input_layout = _check_input_layout(input_layout)

    def build(self, input_shape):
        super().build(input_shape)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        full = self.kernel.shape[-2]
        in_channels = _checked_channels(self, inputs, full)
        kernel, bias = self.kernel, self.bias
        if self.input_layout is not None:
            indices = aw.input_channel_indices(self.input_layout, full)
            kernel = tf.gather(kernel, indices, axis=2)
            if bias is not None:
                bias = tf.gather(
                    ops.reshape(bias, (full, self.depth_multiplier)), indices
                )
        elif not _is_static(in_channels, full):
            kernel = kernel[:, :, :in_channels, :]
            if bias is not None:
                bias = ops.reshape(bias, (full, self.depth_multiplier))
                bias = bias[:in_channels]
        outputs = ops.depthwise_conv(
            inputs,
            kernel,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        if bias is not None:
            outputs = ops.add(outputs, ops.reshape(bias, (-1,)))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def get_config(self):
        return {**super().get_config(), "input_layout": self.input_layout}


@keras.saving.register_keras_serializable(package="keras_slim")
class SlimSeparableConv2D(SlimKernelMixin, keras.layers.SeparableConv2D):
    """Depthwise-separable convolution with a slimmable input and output.

    The depthwise filters follow the incoming channels (as
    `SlimDepthwiseConv2D`); the pointwise kernel is sliced like a
    `SlimConv2D` kernel: its inputs are the depthwise outputs, its outputs
    follow the active width of `channel_group`.

    Args:
        filters: Output channels at full width.
        kernel_size, strides, padding, depth_multiplier, ...: as
            `keras.layers.SeparableConv2D`. `depth_multiplier` must be 1
            when the inputs are slimmed.
        slim_in, slim_out, channel_group, input_layout, output_layout:
            See `SlimConv2D`.
        triangular: Any-Width Networks: the pointwise kernel is masked
            lower-triangular (the depthwise filters are per channel, so
            they need no mask); see `SlimConv2D`.
        **kwargs: Passed to `keras.layers.SeparableConv2D`.

    Example:

    >>> layer = SlimSeparableConv2D(32, 3, padding="same", channel_group="s")
    >>> y = layer(np.zeros((1, 8, 8, 16)))  # builds the full kernels
    >>> from keras_slim.layers import scope as aw
    >>> with aw.active_width(aw.ActiveWidth(channels={"s": 8})):
    ...     y = layer(np.zeros((1, 8, 8, 4)))  # 4 -> 8 channels
    """

    def __init__(
        self,
        filters,
        kernel_size,
        slim_in=True,
        slim_out=True,
        channel_group=None,
        input_layout=None,
        output_layout=None,
        triangular=False,
        **kwargs,
    ):
        super().__init__(filters, kernel_size, **kwargs)
        _check_channels_last(self)
        if slim_in and self.depth_multiplier != 1:
            raise ValueError(
                f"SlimSeparableConv2D '{self.name}': slimmed inputs need "
                f"depth_multiplier=1; got {self.depth_multiplier}."
            )
        self._init_slim(slim_in, slim_out, channel_group, input_layout,
                        triangular, output_layout)

    def build(self, input_shape):
        super().build(input_shape)
        self.input_spec = keras.layers.InputSpec(ndim=4)
        self._build_mask(self.pointwise_kernel.shape[-2], self.filters)

    def call(self, inputs):
        full_in = self.depthwise_kernel.shape[-2]
        depthwise = self.depthwise_kernel
        in_channels = self._check_inputs(inputs, full_in)
        if self.input_layout is not None:
            indices = aw.input_channel_indices(self.input_layout, full_in)
            depthwise = tf.gather(depthwise, indices, axis=2)
        elif not _is_static(in_channels, full_in):
            depthwise = depthwise[:, :, :in_channels, :]
        pointwise, out_channels = self._slice_kernel(
            inputs, self.pointwise_kernel, full_in, self.filters
        )
        outputs = ops.separable_conv(
            inputs,
            depthwise,
            pointwise,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        return self._add_bias_and_activate(outputs, out_channels)

    def compute_output_shape(self, input_shape):
        shape = super().compute_output_shape(input_shape)
        return tuple(shape[:-1]) + (self._static_out(self.filters),)

    # Keras' separable convolution saves every variable (the mask too) by
    # position, unlike Conv2D/Dense: the mixin must not add the mask again.
    def save_own_variables(self, store):
        keras.layers.SeparableConv2D.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.SeparableConv2D.load_own_variables(self, store)

    def get_config(self):
        return {**super().get_config(), **self._slim_config()}
