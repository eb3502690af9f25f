"""The math of one multi-width training step, shared by every driver.

`multi_width_step` is the one step of `SlimmableModel` and `EarlyExitModel`
(hence `model.fit` and the custom `tf.distribute` loops in `trainers/`,
which drive `train_step`): the sandwich rule, inplace distillation and
fixed-width (S-Net) training exist once, with a pluggable per-output
objective (`LabelObjective` here, boosted exits in `boosting`).
"""

import keras
import tensorflow as tf


def sandwich_widths(width_range, size, step, seed=0, per_replica=False):
    """Widths of one sandwich-rule step: max, min and `size - 2` random.

    The random widths are drawn with a stateless generator keyed on the
    step counter, so they differ from step to step inside one traced train
    function, and a resumed run draws the same widths as an uninterrupted
    one.

    Args:
        width_range: `(min_width, max_width)`.
        size: Widths per step (>= 2).
        step: The optimizer's iteration counter (int tensor).
        seed: Python int mixed into the random stream.
        per_replica: Under `tf.distribute`, draw different random widths on
            each replica (AutoSlim's trick for more diversity per step).

    Returns:
        A list: `[max_width, min_width]` as Python floats followed by
        `size - 2` scalar float32 tensors.

    Example:

    >>> widths = sandwich_widths((0.25, 1.0), 4, optimizer.iterations)
    """
    low, high = width_range
    if size < 2:
        raise ValueError(
            f"The sandwich rule needs at least 2 widths (max and min); "
            f"got sandwich_size={size}."
        )
    widths = [high, low]
    if size == 2:
        return widths
    stream = tf.cast(step, tf.int64)
    if per_replica:
        replica_ctx = tf.distribute.get_replica_context()
        if replica_ctx is not None:
            replica = tf.cast(replica_ctx.replica_id_in_sync_group, tf.int64)
            stream = stream * 1024 + replica
    random = tf.random.stateless_uniform(
        [size - 2],
        seed=tf.stack([tf.constant(seed, tf.int64), stream]),
        minval=low,
        maxval=high,
    )
    return widths + [random[i] for i in range(size - 2)]


def distillation_loss(teacher, student, from_logits, sample_weight=None):
    """Soft cross-entropy of `student` against the detached `teacher`.

    Inplace distillation: sub-networks learn from the full network's
    predictions; no gradient flows into the teacher. Scaled for
    `tf.distribute` like any Keras loss.

    Args:
        teacher: The widest width's outputs (logits or probabilities).
        student: A narrower width's outputs, of the same kind.
        from_logits: Whether both are logits (the teacher is then turned
            into probabilities with a softmax).
        sample_weight: Optional per-example weights.

    Returns:
        The scalar loss.

    Example:

    >>> distillation_loss(np.array([[2.0, 0.0]]), np.array([[0.0, 0.0]]),
    ...                   from_logits=True)  # log(2): a uniform student
    <tf.Tensor: shape=(), dtype=float32, numpy=0.6931471824645996>
    """
    teacher = tf.stop_gradient(teacher)
    if from_logits:
        teacher = tf.nn.softmax(teacher)
    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=from_logits)
    return loss_fn(teacher, student, sample_weight=sample_weight)


class LabelObjective:
    """A one-output network trained on the labels (plain cross-entropy).

    The per-output objective of `SlimmableModel`; the widest width learns on
    the labels, a narrower one on the labels too or, with inplace
    distillation, on the widest width's detached predictions.

    Args:
        loss: A `keras.losses.Loss` (see `keras_slim.training.losses`).
        from_logits: Whether the network outputs logits (distillation).

    Example:

    >>> objective = LabelObjective(keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True))
    >>> losses, predictions = objective([logits], y)
    """

    output_names = (None,)

    def __init__(self, loss, from_logits=True):
        self.loss = loss
        self.from_logits = from_logits

    def __call__(self, outputs, y, sample_weight=None, teacher=None):
        """`(losses, predictions)` of one forward pass, one per output.

        Args:
            outputs: The network's outputs (a list).
            y: Labels.
            sample_weight: Optional per-example weights.
            teacher: The widest width's predictions to distil from, or None
                to learn from the labels.
        """
        (output,) = outputs
        if teacher is None:
            loss = self.loss(y, output, sample_weight=sample_weight)
        else:
            loss = distillation_loss(
                teacher[0], output, self.from_logits, sample_weight
            )
        return [loss], [output]


def multi_width_step(
    forward,
    widths,
    objective,
    optimizer,
    variables,
    y,
    sample_weight=None,
    inplace_distillation=False,
    regularization=None,
):
    """One optimizer step over several widths: THE multi-width step.

    `SlimmableModel.train_step` and `EarlyExitModel.train_step` (hence
    `model.fit` and the trainers' custom `tf.distribute` loop, which drives
    `train_step`) all run this function; what differs is the per-output
    `objective` (`LabelObjective`, or boosted exits:
    `keras_slim.training.boosting.BoostedExitsObjective`).

    The first width is the widest: it learns on the labels and, with
    inplace distillation, teaches the others. The losses of every width and
    output, plus the regularisation terms once, are summed into one
    gradient.

    Args:
        forward: `forward(width, is_widest) -> list of outputs`.
        widths: Widths of the step (Python floats, dicts or scalar
            tensors), widest first.
        objective: `objective(outputs, y, sample_weight, teacher) ->
            (losses, predictions)`, one entry per output.
        optimizer: A built `keras.optimizers.Optimizer`.
        variables: The trainable variables.
        y: Labels.
        sample_weight: Optional per-example weights.
        inplace_distillation: Narrower widths learn from the widest one.
        regularization: `() -> scalar or None`, called inside the tape
            (layer regularisers and `add_loss` terms, once per step).

    Returns:
        `(total_loss, per_width)`: the summed loss and, aligned with
        `widths`, `(losses, predictions)` per width.

    Example, a custom training step of a `SlimmableModel` (`optimizer`
    built on `model.trainable_weights`):

    >>> objective = LabelObjective(
    ...     keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> @tf.function
    ... def train_step(x, y):
    ...     widths = sandwich_widths((0.25, 1.0), 4, optimizer.iterations)
    ...     def forward(width, is_widest):
    ...         return model.forward(x, width, training=True,
    ...                              update_moving_stats=is_widest)
    ...     loss, _ = multi_width_step(
    ...         forward, widths, objective, optimizer,
    ...         model.trainable_weights, y, inplace_distillation=True)
    ...     return loss
    """
    with tf.GradientTape() as tape:
        per_width, teacher = [], None
        for i, width in enumerate(widths):
            outputs = forward(width, i == 0)
            losses, predictions = objective(
                outputs, y, sample_weight,
                teacher=teacher if i > 0 and inplace_distillation else None,
            )
            if i == 0:
                teacher = predictions
            per_width.append((losses, predictions))
        total_loss = tf.add_n([loss for losses, _ in per_width
                               for loss in losses])
        extra = regularization() if regularization is not None else None
        if extra is not None:
            total_loss = total_loss + extra
        scaled_loss = optimizer.scale_loss(total_loss)
    gradients = tape.gradient(scaled_loss, variables)
    # Kernels read through tf.gather (inputs assembled by Flatten or
    # Concatenate) get IndexedSlices gradients whose row count follows the
    # random widths. Collective all-reduces fix an instance's shape at its
    # first run, so inside a multi-step loop (fit's steps_per_execution > 1,
    # the trainers' loop) the next step would fail with "Shape mismatch in
    # the collective instance". Dense gradients always have the variable's
    # shape.
    gradients = [
        tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
        for g in gradients
    ]
    optimizer.apply_gradients(zip(gradients, variables))
    return total_loss, per_width


def regularization_loss(model):
    """The sum of `model.losses` (regularisers, `add_loss`), or None.

    Summed as Keras' own `compute_loss` sums them (integer losses cast to
    floatx); counted once per step however many widths ran.
    """
    losses = [
        keras.ops.sum(
            loss if keras.backend.is_float_dtype(loss.dtype)
            else keras.ops.cast(loss, keras.backend.floatx())
        )
        for loss in model.losses
    ]
    return tf.add_n(losses) if losses else None


def unscale_for_distribution(loss):
    """Undoes Keras' per-replica loss scaling, for logging a loss value."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss * replicas if replicas > 1 else loss
