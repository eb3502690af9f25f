"""The math of one multi-width training step, shared by every driver.

`SlimmableModel.train_step` (hence `model.fit`) and the custom
`tf.distribute` loops in `trainers/` both call these functions, so the
sandwich rule, inplace distillation and fixed-width (S-Net) training exist
once.
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
    """
    teacher = tf.stop_gradient(teacher)
    if from_logits:
        teacher = tf.nn.softmax(teacher)
    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=from_logits)
    return loss_fn(teacher, student, sample_weight=sample_weight)


def multi_width_losses(
    forward,
    widths,
    hard_loss,
    inplace_distillation=False,
    from_logits=True,
    sample_weight=None,
):
    """Runs the network at each width and returns its losses.

    The first width is the widest: it is trained on the labels and, with
    inplace distillation, teaches the others. Sum the returned losses and
    take one gradient: all widths update the shared weights in one optimizer
    step.

    Args:
        forward: `forward(width, is_widest) -> predictions`.
        widths: Widths (Python floats or scalar tensors), widest first.
        hard_loss: `hard_loss(predictions, is_widest) -> scalar`: the loss on
            the labels (the widest pass also carries regularization terms,
            which must count once per step, not once per width).
        inplace_distillation: Train the narrower widths on the widest width's
            soft predictions instead of the labels.
        from_logits: Whether predictions are logits (else probabilities).
        sample_weight: Optional per-example weights for distillation.

    Returns:
        `(losses, predictions)`: lists aligned with `widths`.
    """
    losses, predictions = [], []
    teacher = None
    for i, width in enumerate(widths):
        y_pred = forward(width, i == 0)
        if i == 0:
            teacher = y_pred
            loss = hard_loss(y_pred, True)
        elif inplace_distillation:
            loss = distillation_loss(
                teacher, y_pred, from_logits, sample_weight
            )
        else:
            loss = hard_loss(y_pred, False)
        losses.append(loss)
        predictions.append(y_pred)
    return losses, predictions


def unscale_for_distribution(loss):
    """Undoes Keras' per-replica loss scaling, for logging a loss value."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss * replicas if replicas > 1 else loss
