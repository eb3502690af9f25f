"""The active width that slim layers read during a forward pass.

A `SlimmableModel` opens an `ActiveWidth` scope around its network's call;
every slim layer inside reads its output channel count from it. Because the
scope holds tensors, one traced function serves every width: the sandwich
rule runs several widths in one step, `set_width` changes what `predict` uses
without retracing. Outside any scope a slim layer runs at full width.

The scope is thread-local: `tf.distribute` runs each replica's forward pass in
its own thread, and each replica opens its own scope.
"""

import contextlib
import threading

import numpy as np
import tensorflow as tf

_STATE = threading.local()


class ActiveWidth:
    """Channel counts and BN mode for one forward pass.

    Args:
        channels: dict channel group -> active channel count (Python int or
            int32 scalar tensor). Groups missing from the dict run at full
            width.
        width_index: Index into a fixed width list, used by
            `SwitchableBatchNormalization` (S-Net). Python int or int32 tensor.
        update_moving_stats: Whether BN layers in training mode update their
            moving statistics during this pass (the sandwich rule updates
            them only from the widest pass, so they are exact at max width).
        collect_moments: If a list, BN layers normalise with batch statistics
            and append `(layer, mean, variance, count)` to it: the calibration
            pass (see `keras_slim.calibrate_bn`).

    Example:

    >>> conv = SlimConv2D(32, 3, padding="same", channel_group="c1")
    >>> with active_width(ActiveWidth(channels={"c1": 8})):
    ...     y = conv(np.zeros((2, 8, 8, 3)))
    >>> y.shape
    TensorShape([2, 8, 8, 8])
    """

    def __init__(
        self,
        channels=None,
        width_index=None,
        update_moving_stats=True,
        collect_moments=None,
    ):
        self.channels = dict(channels or {})
        self.width_index = width_index
        self.update_moving_stats = update_moving_stats
        self.collect_moments = collect_moments


def current():
    """Returns the innermost `ActiveWidth`, or None outside any scope."""
    stack = getattr(_STATE, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def active_width(state):
    """Makes `state` the active width for slim layers called inside.

    Example:

    >>> layer = SlimDense(16, channel_group="fc")
    >>> with active_width(ActiveWidth(channels={"fc": 4})):
    ...     y = layer(x)  # 4 output units
    """
    stack = getattr(_STATE, "stack", None)
    if stack is None:
        stack = _STATE.stack = []
    stack.append(state)
    try:
        yield state
    finally:
        stack.pop()


def active_channels(group, full):
    """The active count of `group`, `full` when no scope names it."""
    state = current()
    if group is None or state is None:
        return full
    return state.channels.get(group, full)


def input_channel_indices(layout, full, counts=None):
    """Indices of the active input channels for a non-prefix input layout.

    Inputs that come from `Concatenate` or `Flatten` are not a prefix of the
    full-width input: the active channels of each concatenated block, repeated
    for every spatial position after a flatten, are scattered across it.

    Args:
        layout: dict with "blocks": list of `[group, full_channels]` (group
            None for a fixed block), and "repeat": how many times the block
            sequence repeats (spatial positions before a `Flatten`).
        full: The full input dimension (for a shape check).
        counts: dict group -> active count (Python ints) to resolve the
            layout in numpy (`strip`); None reads the active width (graph).

    Returns:
        The active input indices, in order: an int64 numpy array when every
        count is a Python int, else an int tensor.
    """
    total = sum(int(block_full) for _, block_full in layout["blocks"])
    repeat = int(layout.get("repeat", 1))
    if total * repeat != full:
        raise ValueError(
            f"Input layout {layout} describes {total * repeat} features but "
            f"the layer was built for {full}."
        )
    active = []
    for group, block_full in layout["blocks"]:
        if counts is None:
            count = active_channels(group, block_full)
        else:
            count = block_full if group is None else counts.get(group, block_full)
        active.append((count, int(block_full)))
    if all(isinstance(c, (int, np.integer)) for c, _ in active):
        mask = np.concatenate(
            [np.arange(f) < min(int(c), f) for c, f in active]
        )
        return np.flatnonzero(np.tile(mask, repeat))
    masks = [tf.range(f) < tf.cast(c, tf.int32) for c, f in active]
    mask = tf.tile(tf.concat(masks, axis=0), [repeat])
    return tf.reshape(tf.where(mask), [-1])


def to_full_width(inputs, indices, full):
    """Places the active channels of `inputs` at their full-width positions.

    Inactive channels are zeros. With `from_full_width` it runs a
    channel-independent computation at a static channel count (a layer with
    per-channel weights, a depthwise convolution for ONNX) and keeps only
    the active results.

    Args:
        inputs: A tensor whose last axis holds the active channels.
        indices: Their positions in the full width (int tensor), or None
            when they are the first `inputs.shape[-1]` channels.
        full: The full channel count.

    Returns:
        A tensor with `full` channels.
    """
    count = tf.shape(inputs)[-1]
    if indices is None:
        pad = [[0, 0]] * (len(inputs.shape) - 1) + [[0, full - count]]
        return tf.pad(inputs, pad)
    indices = tf.cast(indices, tf.int32)
    # Where each full-width channel sits in `inputs`; inactive ones point at
    # an appended zero channel.
    where = tf.tensor_scatter_nd_update(
        tf.fill([full], count), indices[:, None], tf.range(count)
    )
    padded = tf.concat([inputs, tf.zeros_like(inputs[..., :1])], axis=-1)
    return tf.gather(padded, where, axis=-1)


def from_full_width(outputs, indices, count):
    """The active channels of a full-width result (see `to_full_width`)."""
    if indices is None:
        return outputs[..., :count]
    return tf.gather(outputs, tf.cast(indices, tf.int32), axis=-1)
