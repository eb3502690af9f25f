"""What a width is: validation, channel rounding and per-layer configurations.

Every path that turns a width into channel counts (training, `set_width`,
calibration, `strip`, export) goes through `channels_for_width`, so a width
means the same number of channels everywhere.
"""

import hashlib
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
    """Formats a width for metric names: `0.25 -> "w0.25"`, `1 -> "w1.00"`.

    Two decimals when they hold the width exactly, else as many digits as
    it needs (`0.333 -> "w0.333"`), so distinct widths never share a
    metric. A configuration (dict) gets its `width_suffix`: its name for a
    named configuration (`keras_slim.search.load_configs`), else "cfg" + a
    hash.
    """
    if isinstance(width, dict):
        return width_suffix(width)
    width = float(width)
    if abs(width - round(width, 2)) < 1e-9:
        return f"w{width:.2f}"
    return f"w{width:g}"


def are_configs(widths):
    """Whether a `widths` list holds configurations (dicts), not numbers.

    Raises:
        ValueError: for a list mixing both, or an empty list.
    """
    widths = list(widths)
    if not widths:
        raise ValueError("`widths` is empty; pass at least one width.")
    kinds = {isinstance(w, dict) for w in widths}
    if len(kinds) > 1:
        raise ValueError(
            "`widths` mixes numbers and configurations (dicts layer name -> "
            "channels); pass one kind."
        )
    return kinds == {True}


def width_suffix(width):
    """A file-name-safe tag for a width or configuration: "w0.35".

    A configuration with a `name` attribute (what
    `keras_slim.search.load_configs` returns) is tagged by its name, with
    characters other than letters, digits, ".", "_" and "-" replaced by
    "_"; any other configuration by "cfg" + a hash of its channels.
    """
    name = getattr(width, "name", None)
    if isinstance(width, dict) and name:
        return "".join(c if c.isalnum() or c in "._-" else "_"
                       for c in str(name))
    if isinstance(width, dict):
        text = ",".join(f"{k}={int(v)}" for k, v in sorted(width.items()))
        return "cfg" + hashlib.sha1(text.encode()).hexdigest()[:10]
    return f"w{float(width):g}"


# Widths this close to 1.0 are width 1.0 (the original network).
_ONE_TOLERANCE = 1e-9


def _round_counts(base, width, full, divisor, min_channels, xp):
    """The channel rule on arrays (numpy or TensorFlow ops, via `xp`).

    `make_divisible(base * width)`, kept at `base` at width 1.0 and never
    crossing it: below 1.0 at most `base`, above 1.0 at least `base` and at
    most `full` (the count at the max width). So width 1.0 is exactly the
    original network whatever the divisor, and counts never decrease with
    the width.
    """
    counts = make_divisible(base * width, divisor, min_channels)
    if xp is np:
        counts = counts.astype("int64")
        base = np.broadcast_to(np.asarray(base, "float64"), counts.shape)
        base = base.astype("int64")
        narrow = np.minimum(counts, base)
        wide = np.minimum(np.maximum(counts, base), full)
        width = np.asarray(width)
        # make_divisible may round `base` itself down (26 -> 24 with
        # divisor 8): width 1.0 is the original count regardless.
        narrow = np.where(np.abs(width - 1.0) < _ONE_TOLERANCE, base, narrow)
        return np.where(width <= 1.0, narrow, wide)
    base = tf.cast(base, tf.int32)
    full = tf.cast(full, tf.int32)
    narrow = tf.minimum(counts, base)
    narrow = tf.where(tf.abs(width - 1.0) < _ONE_TOLERANCE, base, narrow)
    wide = tf.minimum(tf.maximum(counts, base), full)
    return tf.where(width <= 1.0, narrow, wide)


def channel_count(base, width, divisor=1, min_channels=None, full=None):
    """Channels of a layer with `base` channels at width 1.0, at `width`.

    The one rule every path uses (`SlimmableModel`, `slim()`, the zoo's
    plain networks, `strip`, export): `make_divisible(base * width,
    divisor, min_channels)`, exactly `base` at width 1.0, at most `base`
    below it and at most `full` above it.

    Args:
        base: Channels at width 1.0.
        width: A positive Python number.
        divisor, min_channels: Rounding, as `make_divisible`.
        full: Cap for widths above 1.0 (the count at the max width).
            Defaults to no cap.

    Returns:
        A Python int.

    Example:

    >>> channel_count(30, 0.99, divisor=8)  # never more than at width 1.0
    30
    >>> channel_count(30, 1.5, divisor=8)
    48
    """
    if full is None:
        full = np.iinfo("int64").max
    counts = _round_counts(
        np.asarray([float(base)]), np.asarray([[float(width)]]),
        np.asarray([full]), divisor, min_channels, np,
    )
    return int(counts[0, 0])


class ChannelPlan:
    """How a width becomes a channel count for each channel group.

    A channel group is a set of layers whose outputs must have the same
    number of channels (tied by `Add`, `Multiply`, ...). An independent
    group follows the width rule of `channel_count`; a derived group has
    exactly `numerator / denominator` times the channels of its parent (an
    expansion layer that keeps the ratio of the official MobileNetV2, a
    grouped convolution that keeps its channels per group). Used by
    `SlimmableModel` for Python widths, in-graph (tensor) widths and
    per-layer configurations alike.

    Args:
        groups: Group names, in a fixed order.
        base: dict group -> channels at width 1.0.
        full: dict group -> channels the layers were built with.
        divisor: Counts of independent groups are multiples of this.
        min_channels: Smallest count (default `divisor`).
        group_divisors: dict group -> a number that group's counts must
            also be multiples of (a grouped convolution's input must be
            whole groups).
        derived: dict group -> `(parent, numerator, denominator)`.

    Example:

    >>> plan = ChannelPlan(["a", "b"], {"a": 16, "b": 96}, {"a": 16, "b": 96},
    ...                    divisor=8, derived={"b": ("a", 6, 1)})
    >>> plan.counts(0.5).tolist()
    [8, 48]
    """

    def __init__(self, groups, base, full, divisor=1, min_channels=None,
                 group_divisors=None, derived=None):
        self.groups = list(groups)
        self.divisor = int(divisor)
        self.min_channels = (
            self.divisor if min_channels is None else int(min_channels)
        )
        self.derived = {
            g: (p, int(n), int(d)) for g, (p, n, d) in (derived or {}).items()
        }
        self.group_divisors = {
            g: int(v) for g, v in (group_divisors or {}).items()
        }
        index = {g: i for i, g in enumerate(self.groups)}
        for group, (parent, _, _) in self.derived.items():
            if group not in index or parent not in index:
                raise ValueError(
                    f"Derived channel group {group!r} -> {parent!r} names an "
                    f"unknown group; groups are {self.groups}."
                )
        self.index = index
        self.base = np.asarray([float(base[g]) for g in self.groups])
        self.full = np.asarray([int(full[g]) for g in self.groups], "int64")
        self.divisors = np.asarray(
            [math.lcm(self.divisor, self.group_divisors.get(g, 1))
             for g in self.groups],
            "int64",
        )
        # A group with its own divisor still gets at least `min_channels`,
        # rounded up to whole multiples of that divisor.
        self.minimums = np.where(
            self.divisors == self.divisor,
            self.min_channels,
            -(-self.min_channels // self.divisors) * self.divisors,
        )
        self._order = self._derivation_order()

    def _derivation_order(self):
        order, done = [], set()

        def visit(group, path=()):
            if group in done or group not in self.derived:
                return
            if group in path:
                raise ValueError(f"Channel groups derive from each other: {path}.")
            visit(self.derived[group][0], path + (group,))
            done.add(group)
            order.append(group)

        for group in self.derived:
            visit(group)
        return order

    @property
    def independent_groups(self):
        """Groups whose count is chosen (not derived from another group)."""
        return [g for g in self.groups if g not in self.derived]

    def counts(self, width):
        """Counts per group at a Python width (or a numpy array of widths).

        Returns:
            An int64 array of shape `np.shape(width) + (len(groups),)`.
        """
        width = np.asarray(width, "float64")
        counts = _round_counts(
            self.base, width[..., None], self.full, self.divisors,
            self.minimums, np,
        )
        for group in self._order:
            parent, numerator, denominator = self.derived[group]
            i, p = self.index[group], self.index[parent]
            counts[..., i] = counts[..., p] * numerator // denominator
        return np.minimum(counts, self.full)

    def counts_tensor(self, width):
        """Counts per group at a width tensor, computed in the graph.

        Returns:
            An int32 tensor of shape `[len(groups)]`.
        """
        width = tf.cast(width, tf.float64)
        counts = _round_counts(
            tf.constant(self.base), width, tf.constant(self.full),
            self.divisors.astype("float64"), self.minimums.astype("float64"),
            tf,
        )
        if self._order:
            values = tf.unstack(counts)
            for group in self._order:
                parent, numerator, denominator = self.derived[group]
                values[self.index[group]] = (
                    values[self.index[parent]] * numerator // denominator
                )
            counts = tf.stack(values)
        return tf.minimum(counts, tf.constant(self.full, tf.int32))

    def counts_for_groups(self, chosen):
        """Counts per group from chosen counts of some groups.

        Groups not in `chosen` keep their full count; derived groups follow
        their parents (naming one is allowed when it agrees).

        Args:
            chosen: dict group -> channel count.

        Returns:
            A list of ints aligned with `groups`.

        Raises:
            ValueError: for a count that breaks a group's divisibility or
                disagrees with its parent.
        """
        counts = dict(zip(self.groups, self.full.tolist()))
        for group, count in chosen.items():
            if group not in self.derived:
                divisor = self.group_divisors.get(group, 1)
                if count % divisor:
                    raise ValueError(
                        f"Channel group {group!r} needs a multiple of "
                        f"{divisor} channels (whole groups of a grouped "
                        f"convolution); got {count}."
                    )
                counts[group] = int(count)
        for group in self._order:
            parent, numerator, denominator = self.derived[group]
            counts[group] = counts[parent] * numerator // denominator
        for group, count in chosen.items():
            if group in self.derived and counts[group] != count:
                parent = self.derived[group][0]
                raise ValueError(
                    f"Channel group {group!r} has {self.derived[group][1]}/"
                    f"{self.derived[group][2]} times the channels of "
                    f"{parent!r} ({counts[parent]}), so {counts[group]}; "
                    f"the configuration asks for {count}."
                )
        return [counts[g] for g in self.groups]


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
