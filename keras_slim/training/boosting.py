"""The math of boosted (BoostNet) and plain early-exit training, once.

Exit `n` of an early-exit network produces raw logits `f_n`. Its prediction
is the ensemble

    P_1 = f_1,    P_n = f_n + t_n * P_{n-1}    (n = 2..N),

and, trained like gradient boosting, exit `n` learns on

    CE(f_n + stop_gradient(t_n * P_{n-1}), y),

whose value is CE(P_n, y): the training-time logits of every exit are the
inference-time ones, computed by the same function (`ensemble_logits`).
Plain joint training (MSDNet) is the special case `t = 0`: `P_n = f_n` and
the loss is the sum of per-exit cross-entropies on `f_n`.

`EarlyExitModel.train_step` and `test_step` (hence `model.fit`,
`model.evaluate`, and the trainers' custom loop, which drives `train_step`)
and the staged exporters all call these functions.

Indexing: the official BoostNet code applies the per-exit weight `t[i]` at
exit `i` in inference but at exit `i + 1` in training (an off-by-one that
only matters when the weights differ per exit). Here exit `n` uses `t_n` in
both.

Reference:
    Yu et al., Boosted Dynamic Neural Networks, AAAI 2023
    (https://arxiv.org/abs/2211.16726).
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_slim.training.steps import distillation_loss


def resolve_ensemble_weights(weight, num_exits):
    """The ensemble weight `t_n` of every exit, as a list of floats.

    Args:
        weight: One number for every exit (BoostNet's scripts use 0.5; 0
            is plain joint training), a `(start, end)` pair spaced linearly
            over the exits (`numpy.linspace(start, end, num_exits)`, as the
            official `--ensemble_reweight` does), or one value per exit.
            `t_1` is kept for that format but has no effect: exit 1 has no
            previous ensemble.
        num_exits: Number of exits `N` (>= 1).

    Returns:
        A list of `num_exits` floats.

    Raises:
        ValueError: for a negative, NaN or infinite value, or a list whose
            length is neither 1, 2 nor `num_exits`.

    Example:

    >>> resolve_ensemble_weights(0.5, 4)
    [0.5, 0.5, 0.5, 0.5]
    >>> resolve_ensemble_weights((0.0, 1.0), 3)
    [0.0, 0.5, 1.0]
    """

    def check(value):
        if isinstance(value, bool) or not isinstance(
            value, (numbers.Real, np.floating, np.integer)
        ):
            raise ValueError(
                "The ensemble weight t must be a number, a (start, end) pair "
                f"or one number per exit; got {weight!r}."
            )
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                "The ensemble weight t must be finite and >= 0 (0 is plain "
                f"joint training, BoostNet uses 0.5); got {value} in "
                f"{weight!r}."
            )
        return value

    if isinstance(weight, (list, tuple, np.ndarray)):
        values = [check(v) for v in list(weight)]
        if len(values) == 1:
            return values * num_exits
        if len(values) == num_exits:
            return values
        if len(values) == 2:
            return [float(v) for v in np.linspace(values[0], values[1],
                                                  num_exits)]
        raise ValueError(
            f"The ensemble weight t has {len(values)} values; pass one "
            "number, a (start, end) pair, or one value per exit "
            f"({num_exits} for this model)."
        )
    return [check(weight)] * num_exits


def ensemble_step(exit_logits, previous, weight, stop_gradient=False):
    """`P_n = f_n + t_n * P_{n-1}` for one exit.

    Args:
        exit_logits: `f_n`, the exit's raw logits.
        previous: `P_{n-1}`, or None for the first exit.
        weight: `t_n` (a Python float).
        stop_gradient: Detach `t_n * P_{n-1}` (training: the exit learns
            the residual of the frozen ensemble before it).

    Returns:
        `P_n`, a tensor like `exit_logits`.
    """
    if previous is None or weight == 0:
        return exit_logits
    carried = ops.multiply(ops.cast(weight, previous.dtype), previous)
    if stop_gradient:
        carried = ops.stop_gradient(carried)
    return ops.add(exit_logits, carried)


def ensemble_logits(exit_logits, weights, stop_gradient=False):
    """Ensemble logits `P_1..P_N` of every exit from raw logits `f_1..f_N`.

    The one formula of both training (`stop_gradient=True`) and inference:
    the values are identical, only the gradient differs.

    Args:
        exit_logits: List of `f_n` tensors, in exit order.
        weights: Per-exit `t_n` (see `resolve_ensemble_weights`).
        stop_gradient: Detach each `t_n * P_{n-1}`, so exit n's loss sends
            no gradient into the exits before it.

    Returns:
        A list of `P_n` tensors, in exit order.

    Example:

    >>> p = ensemble_logits([f1, f2, f3], [0.5, 0.5, 0.5])
    >>> # p[2] == f3 + 0.5 * (f2 + 0.5 * f1)
    """
    if len(weights) != len(exit_logits):
        raise ValueError(
            f"{len(exit_logits)} exits but {len(weights)} ensemble weights."
        )
    ensembles, previous = [], None
    for logits, weight in zip(exit_logits, weights):
        previous = ensemble_step(logits, previous, weight, stop_gradient)
        ensembles.append(previous)
    return ensembles


def exit_losses(exit_logits, y, weights, loss_fn, sample_weight=None,
                teacher=None):
    """Per-exit training losses of one forward pass.

    Exit n's loss is `loss_fn(y, f_n + stop_gradient(t_n * P_{n-1}))`, or,
    with a `teacher` (inplace distillation of a narrower width), the soft
    cross-entropy to the detached softmax of the teacher's `P_n`.

    Args:
        exit_logits: List of raw exit logits `f_n`.
        y: Labels.
        weights: Per-exit ensemble weights `t_n`.
        loss_fn: A `keras.losses.Loss` on logits (scaled for `tf.distribute`
            like every Keras loss).
        sample_weight: Optional per-example weights.
        teacher: Optional list of teacher ensemble logits, one per exit.

    Returns:
        `(losses, logits)`: the per-exit scalar losses and the per-exit
        training logits (equal in value to the inference ensembles).
    """
    logits = ensemble_logits(exit_logits, weights, stop_gradient=True)
    if teacher is None:
        losses = [loss_fn(y, z, sample_weight=sample_weight) for z in logits]
    else:
        losses = [
            distillation_loss(t, z, from_logits=True,
                              sample_weight=sample_weight)
            for t, z in zip(teacher, logits)
        ]
    return losses, logits


class BoostedExitsObjective:
    """Every exit of one forward pass, trained like gradient boosting.

    The per-output objective of `EarlyExitModel` in the shared multi-width
    step (`keras_slim.training.steps.multi_width_step`): exit n learns on
    `loss(y, f_n + stop_gradient(t_n * P_{n-1}))`, or, for a narrower width
    with inplace distillation, on the widest width's detached `P_n`.

    Args:
        loss: A `keras.losses.Loss` on logits.
        weights: Per-exit ensemble weights `t_n`.

    Example:

    >>> objective = BoostedExitsObjective(
    ...     keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...     [0.5, 0.5, 0.5])
    >>> losses, ensembles = objective([f1, f2, f3], y)
    """

    def __init__(self, loss, weights):
        self.loss = loss
        self.weights = list(weights)
        self.output_names = tuple(
            f"exit{k}" for k in range(1, len(self.weights) + 1))

    def __call__(self, outputs, y, sample_weight=None, teacher=None):
        return exit_losses(list(outputs), y, self.weights, self.loss,
                           sample_weight, teacher=teacher)


def gradient_rescale_scales(num_exits):
    """Backward scales of MSDNet's gradient equilibrium, per early exit.

    After block `i` (0-indexed, `N` exits), the features the exit head reads
    get gradient scale `1 / (N - i)` and the path on to block `i + 1` gets
    `(N - i - 1) / (N - i)`, which is the official code's two rescalings
    (`1 / (N - i)` on both, then `N - i - 1` on the trunk) folded into one
    per branch. Block `i`'s output gradient is then
    `(g_head_i + (N - i - 1) * g_later) / (N - i)`, and by induction the
    parameters of block `j` receive the MEAN, not the sum, of the gradients
    of the `N - j` exit losses that depend on them.

    Args:
        num_exits: `N` (>= 2).

    Returns:
        A list of `N - 1` `(head_scale, trunk_scale)` pairs, one per early
        exit (the last exit has no branch).

    Example:

    >>> gradient_rescale_scales(3)
    [(0.3333333333333333, 0.6666666666666666), (0.5, 0.5)]
    """
    return [
        (1.0 / (num_exits - i), (num_exits - i - 1) / (num_exits - i))
        for i in range(num_exits - 1)
    ]


def softmax_confidence(logits):
    """Max softmax probability and arg-max of logits, in float64 numpy.

    The confidence every dynamic-inference path compares with a threshold
    (threshold calibration, `predict_dynamic`, `run_cascade`), so they
    decide alike on the same logits.

    Args:
        logits: Array `[..., num_classes]`.

    Returns:
        `(confidence, label)` arrays of shape `logits.shape[:-1]`.
    """
    if not isinstance(logits, np.ndarray):
        logits = keras.ops.convert_to_numpy(logits)
    logits = np.asarray(logits, "float64")
    # max_j softmax(l)_j = 1 / sum_j exp(l_j - max l).
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return 1.0 / np.exp(shifted).sum(axis=-1), logits.argmax(axis=-1)
