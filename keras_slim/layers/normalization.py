"""Batch normalization for slimmable networks.

Batch statistics of a sub-network differ from those of the full network, so
the statistics a width uses at inference are recomputed after training
(`keras_slim.calibrate_bn`) and stored per channel configuration. A layer
holds, per configuration key, the exact population mean and variance; the
owning model selects one with `set_width` by copying it into `active_mean` /
`active_variance`, so inference never needs retracing.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_slim import compat
from keras_slim.layers import scope as aw
from keras_slim.layers.convolution import _check_input_layout
from keras_slim.layers.convolution import _checked_channels

# Moving statistics of several replicas are averaged on every update so they
# cannot drift apart under tf.distribute (Keras' default, "none", lets them).
_STAT_AGGREGATION = "mean"

# Benchmarks flip this (before tracing) to measure the gather/scatter path.
_FAST_PREFIX_UPDATE = True


def _take_channels(values, count, indices, full):
    """The active entries of a per-channel vector: a prefix or a gather."""
    if values is None:
        return None
    if indices is not None:
        return tf.gather(values, indices, axis=-1)
    if isinstance(count, int) and count == full:
        return values
    # `values` is 1-D; `[..., :count]` would convert (tf2onnx 1.17) to an
    # ONNX Slice with duplicate axes that onnxruntime rejects.
    return values[:count]


class _SlimNormalizationBase(keras.layers.BatchNormalization):
    """Slicing, calibration slots and the training/inference math."""

    def __init__(
        self, calibration_keys=(), input_layout=None, **kwargs
    ):
        super().__init__(**kwargs)
        if self.axis not in (-1,):
            raise ValueError(
                f"{type(self).__name__} '{self.name}' normalises the last "
                f"(channels) axis only; got axis={self.axis}."
            )
        if getattr(self, "renorm", False):
            raise ValueError(
                f"{type(self).__name__} '{self.name}' does not support "
                "renorm=True (batch renormalization): slimmable BN uses "
                "plain batch statistics per width. Use renorm=False."
            )
        self.input_layout = _check_input_layout(input_layout)
        self.calibration_keys = list(calibration_keys)
        self.calibrated = {}

    # Shapes of the per-channel parameters; S-Net has one row per width.
    def _param_shape(self, channels):
        return (channels,)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.channels = channels
        shape = self._param_shape(channels)
        if self.scale:
            self.gamma = self.add_weight(
                shape=shape,
                name="gamma",
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                trainable=True,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                shape=shape,
                name="beta",
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                trainable=True,
                autocast=False,
            )
        self.moving_mean = self._stat_weight(
            "moving_mean", shape, self.moving_mean_initializer
        )
        self.moving_variance = self._stat_weight(
            "moving_variance", shape, self.moving_variance_initializer
        )
        self.active_mean = self._stat_weight("active_mean", (channels,))
        self.active_variance = self._stat_weight(
            "active_variance", (channels,), "ones"
        )
        # 1.0 while a calibrated configuration is active, else 0.0 (use the
        # moving statistics).
        self.use_calibrated = self._stat_weight("use_calibrated", ())
        for key in self.calibration_keys:
            self._create_slot(key)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def _stat_weight(self, name, shape, initializer="zeros"):
        return self.add_weight(
            name=name,
            shape=shape,
            initializer=initializer,
            trainable=False,
            autocast=False,
            aggregation=_STAT_AGGREGATION,
        )

    def _create_slot(self, key):
        self.calibrated[key] = (
            self._stat_weight(f"calibrated_mean_{key}", (self.channels,)),
            self._stat_weight(
                f"calibrated_variance_{key}", (self.channels,), "ones"
            ),
        )

    # ---- calibration slots (called by the model, outside any trace) ----
    def store_calibration(self, key, mean, variance):
        """Stores exact statistics for the channel configuration `key`.

        `mean` and `variance` cover the active channels (a prefix or, after
        a Concatenate, the layout's indices); the rest stay at 0 / 1.
        """
        if key not in self.calibrated:
            # Slots are created on demand, as Keras' own `enable_lora` does.
            with compat.creating_variables_after_build(self):
                self._create_slot(key)
            self.calibration_keys.append(key)
        mean_var, variance_var = self.calibrated[key]
        mean_var.assign(np.asarray(mean, "float32"))
        variance_var.assign(np.asarray(variance, "float32"))

    def activate_calibration(self, key):
        """Makes inference use the statistics stored under `key`.

        Returns False (and falls back to the moving statistics) when `key`
        was never calibrated.
        """
        if key is None or key not in self.calibrated:
            self.use_calibrated.assign(0.0)
            return False
        mean_var, variance_var = self.calibrated[key]
        self.active_mean.assign(mean_var)
        self.active_variance.assign(variance_var)
        self.use_calibrated.assign(1.0)
        return True

    # ---- the math ----
    def _channel_indices(self, inputs):
        """Active channel indices, or None when they are a prefix."""
        if self.input_layout is not None:
            return aw.input_channel_indices(self.input_layout, self.channels)
        return None

    def _take(self, values, count, indices):
        return _take_channels(values, count, indices, self.channels)

    def _moments(self, inputs):
        reduction_axes = list(range(len(inputs.shape) - 1))
        if not self.synchronized:
            mean, variance = tf.nn.moments(inputs, reduction_axes)
            count = tf.cast(
                tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32
            )
            return mean, variance, count
        # Cross-replica statistics, as Keras' synchronized BN computes them.
        local_sum = tf.reduce_sum(inputs, reduction_axes)
        local_squares = tf.reduce_sum(tf.square(inputs), reduction_axes)
        local_count = tf.cast(
            tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32
        )
        replica_ctx = tf.distribute.get_replica_context()
        if replica_ctx is not None:
            # Padded to the full channel count: a collective op keeps the
            # shape of its first run within one tf.function call, and the
            # active width changes from step to step inside a multi-step
            # training loop.
            active = local_sum.shape[0]
            if active is None:
                active = tf.shape(local_sum)[0]
            padding = [[0, self.channels - active]]
            local_sum, local_squares, local_count = replica_ctx.all_reduce(
                tf.distribute.ReduceOp.SUM,
                [tf.pad(local_sum, padding), tf.pad(local_squares, padding),
                 local_count],
            )
            local_sum = local_sum[:active]
            local_squares = local_squares[:active]
        mean = local_sum / local_count
        variance = tf.maximum(local_squares / local_count - tf.square(mean), 0)
        return mean, variance, local_count

    def _rows(self):
        """(gamma, beta, moving_mean, moving_variance) for the active width,
        each of full channel length."""
        raise NotImplementedError

    def _update_moving(self, mean, variance, count, indices):
        raise NotImplementedError

    def call(self, inputs, training=None, mask=None):
        if mask is not None:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' received a mask (from "
                "a Masking or Embedding(mask_zero=True) layer): masked batch "
                "statistics are not supported by slimmable BN. Remove the "
                "mask before this layer."
            )
        input_dtype = inputs.dtype
        if input_dtype in ("float16", "bfloat16"):
            inputs = ops.cast(inputs, "float32")
        count = _checked_channels(self, inputs, self.channels)
        indices = self._channel_indices(inputs)
        state = aw.current()
        collect = state is not None and state.collect_moments is not None
        gamma, beta, moving_mean, moving_variance = self._rows()
        # As Keras' BatchNormalization: a frozen layer (trainable=False)
        # runs in inference mode even when called with training=True.
        if (training and self.trainable) or collect:
            mean, variance, n = self._moments(inputs)
            if collect:
                active = (
                    tf.range(count) if indices is None
                    else tf.convert_to_tensor(indices)
                )
                state.collect_moments.append(
                    (self, mean, variance, n, active)
                )
            elif state is None or state.update_moving_stats:
                self._update_moving(mean, variance, n, indices)
        elif training:
            # Frozen during training: the moving statistics, at every
            # training width (calibrated ones belong to `set_width`'s width).
            mean = self._take(moving_mean, count, indices)
            variance = self._take(moving_variance, count, indices)
        else:
            calibrated = ops.cast(self.use_calibrated, "bool")
            mean = self._take(
                ops.where(calibrated, self.active_mean, moving_mean),
                count,
                indices,
            )
            variance = self._take(
                ops.where(calibrated, self.active_variance, moving_variance),
                count,
                indices,
            )
        gamma = self._take(gamma, count, indices)
        beta = self._take(beta, count, indices)
        outputs = tf.nn.batch_normalization(
            inputs, mean, variance, beta, gamma, self.epsilon
        )
        return ops.cast(outputs, input_dtype)

    def _momentum_update(self, variable, row, value, indices):
        """`variable[row][active] <- m * old + (1 - m) * value`."""
        if indices is None and row is None and _FAST_PREFIX_UPDATE:
            # Active channels are a prefix: update it with plain slicing
            # (same values as the gather/scatter below, fewer ops; no
            # slicing at all when the prefix is the full length).
            old = ops.convert_to_tensor(variable)
            count = value.shape[0]
            if count is not None and count == variable.shape[0]:
                variable.assign(self.momentum * old + (1 - self.momentum) * value)
                return
            count = tf.shape(value)[0]
            new_active = self.momentum * old[:count] + (1 - self.momentum) * value
            variable.assign(tf.concat([new_active, old[count:]], axis=0))
            return
        if indices is None:
            indices = tf.range(tf.shape(value)[0])
        old = variable if row is None else variable[row]
        old_active = tf.gather(old, indices)
        new_active = self.momentum * old_active + (1 - self.momentum) * value
        if row is None:
            updated = tf.tensor_scatter_nd_update(
                ops.convert_to_tensor(old), indices[:, None], new_active
            )
        else:
            coords = tf.stack(
                [tf.fill(tf.shape(indices), tf.cast(row, indices.dtype)),
                 indices],
                axis=1,
            )
            updated = tf.tensor_scatter_nd_update(
                ops.convert_to_tensor(variable), coords, new_active
            )
        variable.assign(updated)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "calibration_keys": list(self.calibration_keys),
                "input_layout": self.input_layout,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_slim")
class SlimBatchNormalization(_SlimNormalizationBase):
    """Batch normalization with one shared gamma/beta sliced to the width.

    Training normalises with batch statistics of the active channels. Moving
    statistics are updated only by the passes that ask for it (the widest
    pass of the sandwich rule), so they are those of the full width; other
    widths use statistics computed after training by
    `keras_slim.calibrate_bn` and selected with `SlimmableModel.set_width`.
    Calibrated statistics are saved with the model.

    Args:
        calibration_keys: Keys of stored calibrations (filled in by
            `calibrate_bn`; restored when a saved model is loaded).
        input_layout: See `SlimConv2D` (inputs assembled by `Concatenate`).
        **kwargs: As `keras.layers.BatchNormalization` (channels-last only).

    Example:

    >>> bn = SlimBatchNormalization(momentum=0.9)
    >>> y = bn(np.random.rand(4, 8, 8, 32), training=True)
    >>> y = bn(np.random.rand(4, 8, 8, 12), training=True)  # first 12

    Reference:
        Yu & Huang, Universally Slimmable Networks and Improved Training
        Techniques, ICCV 2019 (https://arxiv.org/abs/1903.05134).
    """

    def _rows(self):
        return (
            self.gamma if self.scale else None,
            self.beta if self.center else None,
            self.moving_mean,
            self.moving_variance,
        )

    def _update_moving(self, mean, variance, count, indices):
        self._momentum_update(self.moving_mean, None, mean, indices)
        self._momentum_update(self.moving_variance, None, variance, indices)


@keras.saving.register_keras_serializable(package="keras_slim")
class SwitchableBatchNormalization(_SlimNormalizationBase):
    """Private batch normalization for each width of a fixed list (S-Net).

    Holds one gamma, beta and moving statistics row per width; the active
    width's index (from the model) picks the row. Rows are full length and
    sliced to the active channels.

    Args:
        num_widths: How many widths the network switches between.
        **kwargs: As `SlimBatchNormalization`.

    Example:

    >>> bn = SwitchableBatchNormalization(num_widths=4)
    >>> y = bn(np.random.rand(4, 8, 8, 32))  # the last (widest) row

    Reference:
        Yu et al., Slimmable Neural Networks, ICLR 2019
        (https://arxiv.org/abs/1812.08928).
    """

    def __init__(self, num_widths, **kwargs):
        super().__init__(**kwargs)
        if int(num_widths) < 1:
            raise ValueError(
                f"num_widths must be a positive integer; got {num_widths}."
            )
        self.num_widths = int(num_widths)

    def _param_shape(self, channels):
        return (self.num_widths, channels)

    def _row_index(self):
        state = aw.current()
        if state is None or state.width_index is None:
            return self.num_widths - 1
        return state.width_index

    def _rows(self):
        row = self._row_index()

        def take(variable):
            return ops.take(variable, row, axis=0)

        return (
            take(self.gamma) if self.scale else None,
            take(self.beta) if self.center else None,
            take(self.moving_mean),
            take(self.moving_variance),
        )

    def _update_moving(self, mean, variance, count, indices):
        row = self._row_index()
        self._momentum_update(self.moving_mean, row, mean, indices)
        self._momentum_update(self.moving_variance, row, variance, indices)

    def get_config(self):
        return {**super().get_config(), "num_widths": self.num_widths}


@keras.saving.register_keras_serializable(package="keras_slim")
class SlimLayerNormalization(keras.layers.LayerNormalization):
    """Layer normalization over the active channels.

    Normalises each position over the channels the active width keeps (not
    over the full width padded with zeros), with the leading slice of gamma
    and beta: the slimmable counterpart of a channels-last
    `keras.layers.LayerNormalization` (ConvNeXt).

    Args:
        input_layout: See `SlimConv2D` (inputs assembled by `Concatenate`).
        **kwargs: As `keras.layers.LayerNormalization`, normalising the last
            axis only.

    Example:

    >>> ln = SlimLayerNormalization(epsilon=1e-6)
    >>> y = ln(np.random.rand(2, 4, 4, 32))  # builds 32 gammas
    >>> y = ln(np.random.rand(2, 4, 4, 12))  # normalises over 12 channels
    """

    def __init__(self, input_layout=None, **kwargs):
        super().__init__(**kwargs)
        axis = self.axis if isinstance(self.axis, (list, tuple)) else [self.axis]
        if list(axis) != [-1]:
            raise ValueError(
                f"SlimLayerNormalization '{self.name}' normalises the last "
                f"(channels) axis only; got axis={self.axis}."
            )
        self.input_layout = _check_input_layout(input_layout)

    def build(self, input_shape):
        super().build(input_shape)
        self.channels = int(input_shape[-1])
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def call(self, inputs):
        count = _checked_channels(self, inputs, self.channels)
        indices = None
        if self.input_layout is not None:
            indices = aw.input_channel_indices(self.input_layout, self.channels)
        outputs = ops.layer_normalization(
            inputs,
            _take_channels(self.gamma, count, indices, self.channels),
            _take_channels(self.beta, count, indices, self.channels),
            # A positive axis: with [-1] Keras reshapes gamma to the static
            # input shape, which has no channel count at a run-time width.
            [len(inputs.shape) - 1],
            self.epsilon,
            rms_scaling=self.rms_scaling,
        )
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "input_layout": self.input_layout}
