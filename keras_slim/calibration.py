"""Post-training BatchNormalization calibration with exact statistics."""

import keras
import numpy as np
import tensorflow as tf

from keras_slim.layers import scope as aw


class _Moments:
    """Exact running mean/variance of one BN layer's active channels.

    Batches are merged with Chan et al.'s parallel formula in float64: the
    result is the population mean and variance over every calibration
    example, not an exponential moving average.
    """

    def __init__(self):
        self.count = 0.0
        self.mean = None
        self.m2 = None
        self.indices = None

    def add(self, mean, variance, count, indices):
        mean = mean.astype("float64")
        m2 = variance.astype("float64") * count
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean, m2
            self.indices = indices
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * count / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * count / total
        self.count = total

    def full_length(self, channels):
        mean = np.zeros(channels, "float64")
        variance = np.ones(channels, "float64")
        mean[self.indices] = self.mean
        variance[self.indices] = self.m2 / self.count
        return mean, variance


class _MomentsProgram:
    """The traced calibration pass of one model, kept with the model.

    Widths are tensors, so one trace serves every width; keeping it across
    `calibrate_bn` calls saves a retrace per call, which costs as much as
    calibrating a thousand small images.
    """

    def __init__(self, model):
        self.layers = []

        @tf.function(reduce_retracing=True)
        def run(x, counts, width_index):
            moments = []
            state = aw.ActiveWidth(
                {g: counts[i] for i, g in enumerate(model.channel_groups)},
                width_index,
                update_moving_stats=False,
                collect_moments=moments,
            )
            with aw.active_width(state):
                model.network(x, training=False)
            self.layers[:] = [m[0] for m in moments]
            return [m[1:] for m in moments]

        self.run = run


def _moments_program(model):
    program = getattr(model, "_calibration_program", None)
    if program is None:
        program = _MomentsProgram(model)
        model._calibration_program = program
    return program


def _inputs_of(batch):
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, dict) and "x" in batch:
        return batch["x"]
    return batch


def _as_dataset(data, batch_size):
    if isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, np.ndarray) or tf.is_tensor(data):
        if len(data) == 0:
            raise ValueError(
                "calibrate_bn got an empty array; pass at least one example."
            )
        return tf.data.Dataset.from_tensor_slices(data).batch(batch_size)
    raise ValueError(
        "calibrate_bn needs a tf.data.Dataset (of x or (x, y) batches) or a "
        f"numpy array of inputs; got {type(data).__name__}."
    )


def calibrate_bn(
    model, data, widths=None, num_batches=None, batch_size=128, verbose=1
):
    """Recomputes BatchNormalization statistics for each width, exactly.

    For every width (or per-layer channel configuration), runs the network
    on `data` in inference mode while each BN layer normalises with batch
    statistics and accumulates the exact mean and variance of its active
    channels over all examples (not an exponential moving average). The
    results are stored in the model, keyed by channel configuration, used
    by `model.set_width`, and saved with `model.save`.

    Frozen layers (`trainable=False`, e.g. a pretrained backbone) are
    calibrated too: at a narrower width their inputs change like any
    other layer's, so the statistics they were frozen with hold for the
    full width only. Calibration never touches the moving statistics or
    any trained weight (it stores separate per-width statistics), and
    during training a frozen BN keeps using its moving statistics, as in
    Keras; only inference at a calibrated width uses the new ones.

    Args:
        model: A `keras_slim.SlimmableModel`.
        data: A `tf.data.Dataset` yielding `x` or `(x, y[, w])` batches, or
            a numpy array of inputs. Training data without augmentation is
            the usual choice.
        widths: Widths and/or dicts layer name -> channels. Defaults to the
            model's width list (S-Net) or 4 evenly spaced widths.
        num_batches: Batches per width (default: all of `data`, which must
            then be finite).
        batch_size: Batch size when `data` is an array.
        verbose: 0 = silent, 1 = a Keras progress bar.

    Returns:
        The list of calibration keys, aligned with `widths`.

    Raises:
        ValueError: for an invalid width or configuration, empty data, or
            data whose statistics are not finite (nothing is stored then).

    Example:

    >>> keras_slim.calibrate_bn(model, train_ds, widths=[0.25, 0.5, 1.0],
    ...                         num_batches=40)
    >>> model.set_width(0.25)  # uses the exact statistics of width 0.25
    """
    if widths is None:
        widths = model.widths or list(
            np.linspace(*model.width_range, num=4).round(4)
        )
    if not isinstance(widths, (list, tuple)):
        widths = [widths]
    # Validate every width before spending time on any of them.
    plans = [
        (w, model.channels_for(w), model.width_index(w),
         model.calibration_key(w))
        for w in widths
    ]
    if not model.bn_layers:
        return [key for *_, key in plans]
    dataset = _as_dataset(data, batch_size)
    if num_batches is not None:
        if int(num_batches) < 1:
            raise ValueError(f"num_batches must be >= 1; got {num_batches}.")
        dataset = dataset.take(int(num_batches))
    elif dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "The calibration dataset is infinite; pass num_batches."
        )
    total_batches = int(dataset.cardinality())
    progress = keras.utils.Progbar(
        total_batches * len(plans) if total_batches > 0 else None,
        verbose=verbose,
        unit_name="batch",
    )
    program = _moments_program(model)
    collected_layers, moments_of = program.layers, program.run

    checked = []
    seen = 0
    for width, counts, index, key in plans:
        accumulators = {}
        batches = 0
        for batch in dataset:
            results = moments_of(
                _inputs_of(batch),
                tf.constant(counts, tf.int32),
                tf.constant(index, tf.int32),
            )
            for layer, (mean, variance, count, indices) in zip(
                collected_layers, results
            ):
                accumulators.setdefault(id(layer), (layer, _Moments()))[1].add(
                    mean.numpy(), variance.numpy(), float(count), indices.numpy()
                )
            batches += 1
            seen += 1
            progress.update(seen)
        if batches == 0:
            raise ValueError(
                "The calibration dataset yielded no batches; pass data with "
                "at least one example."
            )
        statistics = []
        for layer, moments in accumulators.values():
            mean, variance = moments.full_length(layer.channels)
            if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(variance))):
                raise ValueError(
                    f"calibrate_bn: the statistics of layer '{layer.name}' at "
                    f"width {width!r} are not finite (NaN or inf): the "
                    "calibration data, or the activations it produces, "
                    "contain NaN or inf. Nothing was stored; the model keeps "
                    "its previous statistics."
                )
            statistics.append((layer, mean, variance))
        checked.append((width, key, statistics))
    # Only now, with every width's statistics checked, store them.
    for width, key, statistics in checked:
        for layer, mean, variance in statistics:
            layer.store_calibration(key, mean, variance)
        model.calibrations[key] = (
            {"width": float(width)} if not isinstance(width, dict)
            else {"config": dict(width)}
        )
    # Re-select the current width so freshly stored statistics take effect.
    model.set_width(model.width)
    return [key for _, key, _ in checked]
