"""What a width is: validation, channel rounding and per-layer configurations.

Every path that turns a width into channel counts (training, `set_width`,
calibration, `strip`, export) goes through `channels_for_width`, so a width
means the same number of channels everywhere.
"""

import math
import numbers

import numpy as np
import tensorflow as tf

# Products like 0.3 * 10 land on 3.0000000000000004 in floating point; values
# are snapped to this many decimals before rounding so that the Python path
# (float64) and the graph path (float32 widths) agree on every channel count.
_SNAP_DECIMALS = 4


def make_divisible(value, divisor=1, min_value=None):
    """Rounds a channel count to a multiple of `divisor`, robustly.

    Rounds to the nearest multiple of `divisor`, never below `min_value`
    (default: `divisor`) and never more than 10% below `value` (the rule of
    the Slimmable Networks and MobileNet code). Floating-point noise such as
    `0.3 * 10 == 3.0000000000000004` does not change the result.

    Args:
        value: A Python number, a numpy array or a float tensor.
        divisor: Channel counts are multiples of this.
        min_value: Smallest result. Defaults to `divisor`.

    Returns:
        A Python `int` for a Python number, an int64 array for an array, an
        int32 tensor for a tensor.

    Example:

    >>> make_divisible(0.3 * 10)
    3
    >>> make_divisible(37.5, divisor=8)
    40
    """
    min_value = divisor if min_value is None else min_value
    if isinstance(value, np.ndarray):
        value = np.round(value.astype("float64"), _SNAP_DECIMALS)
        rounded = np.floor((value + divisor / 2) / divisor) * divisor
        rounded = np.maximum(min_value, rounded)
        rounded = np.where(rounded < 0.9 * value, rounded + divisor, rounded)
        return rounded.astype("int64")
    if isinstance(value, numbers.Number):
        value = round(float(value), _SNAP_DECIMALS)
        rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
        if rounded < 0.9 * value:
            rounded += divisor
        return int(rounded)
    value = tf.cast(value, tf.float64)
    scale = 10.0**_SNAP_DECIMALS
    value = tf.round(value * scale) / scale
    rounded = tf.floor((value + divisor / 2) / divisor) * divisor
    rounded = tf.maximum(tf.cast(min_value, tf.float64), rounded)
    rounded = tf.where(rounded < 0.9 * value, rounded + divisor, rounded)
    return tf.cast(rounded, tf.int32)


def validate_width(width, width_range):
    """Checks that `width` is a finite number inside `width_range`.

    Args:
        width: The width multiplier to check.
        width_range: `(min_width, max_width)` of the model.

    Returns:
        `width` as a Python float.

    Raises:
        ValueError: if `width` is not a number, is NaN or infinite, is not
            positive, or lies outside `width_range`.

    Example:

    >>> validate_width(0.5, (0.25, 1.0))
    0.5
    """
    if isinstance(width, bool) or not isinstance(
        width, (numbers.Real, np.floating, np.integer)
    ):
        raise ValueError(
            f"A width must be a number in [{width_range[0]}, "
            f"{width_range[1]}] or a dict of layer name -> channels; "
            f"got {width!r} of type {type(width).__name__}."
        )
    width = float(width)
    if not math.isfinite(width) or width <= 0:
        raise ValueError(
            f"A width must be a finite positive number; got {width}. "
            f"This model accepts widths in [{width_range[0]}, "
            f"{width_range[1]}]."
        )
    low, high = width_range
    # Tolerate the round-off of widths computed as e.g. 0.1 * 3.
    if not (low - 1e-9 <= width <= high + 1e-9):
        raise ValueError(
            f"Width {width} is outside this model's range "
            f"[{low}, {high}]. Pass a width inside the range."
        )
    return width


def validate_width_range(width_range):
    """Checks a `(min_width, max_width)` pair and returns it as floats."""
    try:
        low, high = (float(v) for v in width_range)
    except (TypeError, ValueError):
        raise ValueError(
            "`width_range` must be a pair (min_width, max_width) of numbers; "
            f"got {width_range!r}."
        ) from None
    if not (math.isfinite(low) and math.isfinite(high)) or not (
        0 < low <= high
    ):
        raise ValueError(
            "`width_range` must satisfy 0 < min_width <= max_width; "
            f"got {width_range!r}."
        )
    return low, high


def width_tag(width):
    """Formats a width for metric names: `0.25 -> "w0.25"`."""
    return f"w{width:.2f}"


def channel_counts(base_channels, full_channels, width, divisor=1,
                   min_channels=None):
    """Active channel counts of layers with `base_channels` at width 1.0.

    Args:
        base_channels: Channels at width 1.0 (numpy array).
        full_channels: Channels the layers were built with (the cap).
        width: A Python float, or a numpy array of widths (vectorized).

    Returns:
        An int64 array; with an array `width`, shape `width.shape + base.shape`.
    """
    width = np.asarray(width, "float64")
    base = np.asarray(base_channels, "float64")
    counts = make_divisible(
        np.multiply.outer(width, base), divisor, min_channels
    )
    return np.minimum(counts, np.asarray(full_channels))


def staircase(in_counts, out_counts, out_channels, widths=None,
              width_range=None):
    """Per-output input limits that make a triangular layer width-exact.

    Output channel `j` is active from the smallest width `t_j` at which the
    layer has more than `j` outputs; it may read the inputs active at `t_j`
    (and so at every wider width). With these limits a channel's activation
    is the same at every width (Any-Width Networks).

    Args:
        in_counts, out_counts: `f(widths_array) -> counts_array` of the
            layer's input and output channel groups.
        out_channels: The layer's full output count.
        widths: A fixed width list (S-Net style training), or None for a
            continuous `width_range`.
        width_range: `(min, max)` when `widths` is None.

    Returns:
        An int64 array of length `out_channels`.

    Example:

    >>> f = lambda w: np.round(np.asarray(w) * 4).astype(int)
    >>> staircase(f, f, 4, widths=[0.5, 1.0])
    array([2, 2, 4, 4])
    """
    j = np.arange(out_channels)
    if widths is not None:
        widths = np.sort(np.asarray(widths, "float64"))
        outs = np.asarray(out_counts(widths))  # [W]
        ins = np.asarray(in_counts(widths))
        # First listed width at which output j is active.
        first = np.argmax(outs[None, :] > j[:, None], axis=1)
        limits = ins[first]
        limits[outs[-1] <= j] = ins[-1]
        return limits.astype("int64")
    low, high = width_range
    lo = np.full(out_channels, low, "float64")
    hi = np.full(out_channels, high, "float64")
    active_at_low = np.asarray(out_counts(lo)) > j
    # Bisection for the smallest width at which output j is active; counts
    # are non-decreasing and right-continuous in the width.
    for _ in range(60):
        mid = (lo + hi) / 2
        active = np.asarray(out_counts(mid)) > j
        hi = np.where(active, mid, hi)
        lo = np.where(active, lo, mid)
    hi = np.where(active_at_low, low, hi)
    return np.asarray(in_counts(hi)).astype("int64")
