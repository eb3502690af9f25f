"""Scoring channel configurations on a fixed search set, reusing prefixes.

Every greedy candidate narrows one channel group of the current network;
the calls before the first call that group affects compute exactly what
they compute for the current network. `Runner` splits the network at those
cuts into segments (one traced `tf.function` each, with the channel counts
as a tensor, so no retracing per candidate), walks the current network once
through them, and starts each candidate from the tensors crossing its cut:
only the suffix is computed. Only the tensors crossing the current cut are
held, never every activation.

Batch normalisation uses the exact statistics of the search set: the whole
set runs as one batch with each BN layer normalising by that batch's mean
and variance of the candidate's own activations (what
`keras_slim.calibrate_bn` followed by `evaluate` computes on the same
images). A narrower sub-network's activations have different statistics
from the full width's, so the moving statistics of the supernet would rank
candidates by how well they happen to match the full width, not by how good
they are.
"""

import hashlib

import numpy as np
import tensorflow as tf

from keras_slim.layers import scope as aw


def search_arrays(search_data, num_images=None, num_classes=None):
    """`(x, labels)` numpy arrays from `(x, y)` arrays or a dataset.

    Labels may be class indices or one-hot rows. An infinite dataset is
    read up to `num_images` images (required) and refused if it repeats an
    image before that (a `.repeat()`ed set would fill the search set with
    copies). Raises a clear error for empty data and, given `num_classes`,
    for labels outside `[0, num_classes)`.
    """
    if isinstance(search_data, tf.data.Dataset):
        cardinality = int(search_data.cardinality())
        infinite = cardinality == tf.data.INFINITE_CARDINALITY
        if infinite and num_images is None:
            raise ValueError(
                "The search dataset is infinite; pass num_images."
            )
        xs, ys, seen = [], [], 0
        # A dataset of unknown size may repeat too (`.repeat().filter()`);
        # as it may hold real duplicates, only its first image coming
        # back says so.
        digests = {} if infinite or (
            cardinality < 0 and num_images is not None) else None
        for batch in search_data:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError(
                    "The search dataset must yield (x, y) batches with "
                    "labels; got a batch without labels."
                )
            if np.ndim(batch[1]) == 0:
                raise ValueError(
                    "The search dataset yields single examples (a label of "
                    "shape ()); batch it first, e.g. dataset.batch(256)."
                )
            xs.append(np.asarray(batch[0]))
            ys.append(np.asarray(batch[1]))
            if len(xs[-1]) != len(ys[-1]):
                raise ValueError(
                    f"The search dataset yields {len(xs[-1])} images with "
                    f"{len(ys[-1])} labels: a dataset of single examples? "
                    "Batch it first, e.g. dataset.batch(256)."
                )
            if digests is not None:
                _refuse_repeats(xs[-1], digests, seen,
                                first_only=not infinite)
            seen += len(xs[-1])
            if num_images is not None and seen >= num_images:
                break
        # An empty dataset is refused below, as empty arrays are.
        x, y = (np.concatenate(v) if v else np.zeros(0) for v in (xs, ys))
    elif isinstance(search_data, (tuple, list)) and len(search_data) == 2:
        x, y = (np.asarray(v) for v in search_data)
    else:
        raise ValueError(
            "search_data must be (x, y) numpy arrays or a tf.data.Dataset of "
            f"(x, y) batches; got {type(search_data).__name__}."
        )
    if num_images is not None:
        x, y = x[: int(num_images)], y[: int(num_images)]
    if len(x) == 0:
        raise ValueError(
            "The search data is empty; pass at least one labelled image "
            "(about 1,000 held-out training images is usual)."
        )
    if len(x) != len(y):
        raise ValueError(
            f"search_data has {len(x)} images but {len(y)} labels."
        )
    return x, _class_indices(y, num_classes)


def _refuse_repeats(images, digests, offset, first_only=False):
    """Raises if an image of `images` was already seen (by its bytes);
    with `first_only`, only if it is the dataset's first image."""
    for i, image in enumerate(np.ascontiguousarray(images)):
        digest = hashlib.sha1(image.tobytes()).digest()
        if digest in digests and not (first_only and digests[digest] != 0):
            raise ValueError(
                f"The search dataset repeats image "
                f"{digests[digest]} as image {offset + i}: it holds fewer "
                "distinct images than num_images, so the search set would "
                "count copies. Pass a finite dataset (without .repeat()) "
                "or lower num_images."
            )
        digests.setdefault(digest, offset + i)


def _class_indices(y, num_classes):
    """Class indices from index or one-hot labels, checked against the
    network's number of classes."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        if num_classes is not None and y.shape[1] != num_classes:
            raise ValueError(
                f"The search labels are one-hot rows of {y.shape[1]} "
                f"classes, but the network outputs {num_classes}."
            )
        y = y.argmax(axis=1)
    y = y.reshape(len(y))
    if y.dtype.kind == "O":  # e.g. numbers from pandas
        try:
            y = y.astype(np.float64)
        except (TypeError, ValueError):
            pass
    if y.dtype.kind not in "biuf":
        # Strings ("cat") or objects: numpy's checks below would fail with
        # an unrelated TypeError.
        raise ValueError(
            "The search labels must be class indices (whole numbers) or "
            f"one-hot rows; got values of type {y.dtype} such as "
            f"{y[:3].tolist()}. Map class names to indices first."
        )
    if not (np.issubdtype(y.dtype, np.integer)
            or np.issubdtype(y.dtype, np.bool_)):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(
                "The search labels must be class indices (whole numbers) or "
                f"one-hot rows; got values of type {y.dtype} such as "
                f"{y[np.flatnonzero(y != np.round(y))[:3]].tolist()}."
            )
    y = y.astype("int64")
    if num_classes is not None:
        outside = (y < 0) | (y >= num_classes)
        if outside.any():
            raise ValueError(
                f"{int(outside.sum())} search labels are outside [0, "
                f"{num_classes}) (the network has {num_classes} outputs): "
                f"values {sorted(set(y[outside].tolist()))[:5]}. Every "
                "sample would count as wrong; pass class indices (or "
                "one-hot rows) of this network's classes."
            )
    return y


class Runner:
    """Accuracy of channel configurations on one search set, exact BN.

    Args:
        model: A `keras_slim.SlimmableModel`.
        program: Its `keras_slim.search.program.Program`.
        cuts: dict group -> index of the first call the group affects
            (`CostModel.cuts`).
        x, labels: The search set (numpy), run as one batch.

    Example:

    >>> runner = Runner(model, costs.program, costs.cuts, x, labels)
    >>> runner.accuracy(model.full_channels)
    >>> runner.step(current, [("stem", narrower_counts)])
    """

    def __init__(self, model, program, cuts, x, labels):
        self.model = model
        self.program = program
        self.cuts = dict(cuts)
        self.labels = np.asarray(labels)
        self.x = tf.constant(x, dtype=model.network.inputs[0].dtype)
        self.points = sorted(set(self.cuts.values()) | {0})
        self.points.append(program.cut_size)
        self._width_index = model.width_index({})
        self._segments = [None] * (len(self.points) - 1)

    def _state(self, counts):
        return aw.ActiveWidth(
            {g: counts[i] for i, g in enumerate(self.model.channel_groups)},
            self._width_index,
            update_moving_stats=False,
            # Collecting moments makes every BN layer normalise with the
            # statistics of this batch (the whole search set), in
            # inference mode otherwise (no dropout).
            collect_moments=[],
        )

    def _segment(self, i, values):
        """The traced function of segment `i` (built on first use)."""
        if self._segments[i] is None:
            start, stop = self.points[i], self.points[i + 1]
            live_in = self.program.live_at(start)
            live_out = self.program.live_at(stop)
            # Channel counts vary per candidate: leave channel axes unknown
            # so one trace serves all of them.
            signature = [
                tf.TensorSpec(
                    list(values[t].shape[:-1]) + [None], values[t].dtype
                )
                for t in live_in
            ] + [tf.TensorSpec([len(self.model.channel_groups)], tf.int32)]

            def run(*args):
                *tensors, counts = args
                out = self.program.run(
                    start, stop, dict(zip(live_in, tensors)),
                    self._state(counts), keep=live_out,
                )
                return [out[t] for t in live_out]

            self._segments[i] = (
                tf.function(run, input_signature=signature),
                live_in, live_out,
            )
        return self._segments[i]

    def _advance(self, i, values, counts):
        first = self._segments[i] is None
        function, live_in, live_out = self._segment(i, values)
        arguments = [values[t] for t in live_in] + [counts]
        if first:
            # Each segment traces once; TensorFlow counts the segments'
            # first traces together (same Python code) and would warn
            # about "retracing".
            logger = tf.get_logger()
            level = logger.level
            logger.setLevel("ERROR")
            try:
                outputs = function(*arguments)
            finally:
                logger.setLevel(level)
        else:
            outputs = function(*arguments)
        return dict(zip(live_out, outputs))

    def _finish(self, i, values, counts):
        """Logits from the tensors crossing `points[i]`, at `counts`."""
        counts = tf.constant(np.asarray(counts), tf.int32)
        for j in range(i, len(self.points) - 1):
            values = self._advance(j, values, counts)
        return values[self.program.output_id].numpy()

    def accuracy_of(self, logits):
        """Share of the images whose top logit is the true class."""
        return float(np.mean(np.argmax(logits, axis=-1) == self.labels))

    def log_likelihood(self, logits):
        """Mean log-probability of the true class (a smoother score than
        accuracy on few images)."""
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        return float(np.mean(
            log_probs[np.arange(len(self.labels)), self.labels]))

    def logits(self, counts):
        """Logits of the whole search set at group `counts` (no reuse)."""
        return self._finish(0, {self.program.input_id: self.x}, counts)

    def accuracy(self, counts):
        """Search-set accuracy at group `counts`, computed from scratch."""
        return self.accuracy_of(self.logits(counts))

    def step(self, current, candidates, return_logits=False):
        """Scores candidates that each narrow one group of `current`.

        Walks `current` through the segments once; each candidate starts
        from the tensors crossing its group's cut.

        Args:
            current: Group counts of the current network.
            candidates: List of `(group, counts)`.
            return_logits: Also return each candidate's logits.

        Returns:
            A list of accuracies (and of logits), aligned with
            `candidates`.
        """
        by_point = {}
        for position, (group, counts) in enumerate(candidates):
            point = self.points.index(self.cuts[group])
            by_point.setdefault(point, []).append((position, counts))
        scores = [None] * len(candidates)
        logits = [None] * len(candidates)
        values = {self.program.input_id: self.x}
        current = tf.constant(np.asarray(current), tf.int32)
        last = max(by_point) if by_point else -1
        for i in range(len(self.points) - 1):
            for position, counts in by_point.get(i, []):
                logits[position] = self._finish(i, values, counts)
                scores[position] = self.accuracy_of(logits[position])
            if i >= last:
                break
            values = self._advance(i, values, current)
        return (scores, logits) if return_logits else scores
