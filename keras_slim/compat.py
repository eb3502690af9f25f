"""Every use of Keras (and TensorFlow) internals in keras_slim, with its reason.

keras_slim is written against Keras' public API; what follows has no public
equivalent (checked against Keras 3.15, the version the pins allow).
`tests/test_compat.py` exercises each function on the installed Keras, so
an upgrade that moves one of these fails there, by name, rather than deep
inside a conversion or a training step.
"""

import contextlib

import keras
import tensorflow as tf


@contextlib.contextmanager
def creating_variables_after_build(layer):
    """Lets a built layer add variables (BN calibration slots, per width).

    Keras locks a layer's variable tracker once it is built; calibrations
    are stored as variables (saved with the model) created on demand, which
    is how Keras' own `Dense.enable_lora` adds its variables: by unlocking
    `layer._tracker`.

    Example:

    >>> with creating_variables_after_build(bn):
    ...     bn.add_weight(name="calibrated_mean_k1", shape=(16,))
    """
    layer._tracker.unlock()
    try:
        yield
    finally:
        layer._tracker.lock()


def keras_mask(tensor):
    """The mask Keras attached to a tensor, or None.

    Keras keeps it in `tensor._keras_mask`; its accessor
    (`keras.src.backend.common.masking.get_keras_mask`) is not exported.
    """
    return getattr(tensor, "_keras_mask", None)


def operation_modules():
    """`(nn, numpy)`: the modules of Keras' operation classes.

    A functional graph built with `keras.ops.relu(x)` records an instance
    of `keras.src.ops.nn.Relu`; Keras exports the operations only as
    functions, so the classes (which `keras_slim.registry` registers as
    element-wise) are reachable only through `keras.src`.
    """
    from keras.src.ops import nn
    from keras.src.ops import numpy

    return nn, numpy


def application_layers():
    """Layer classes of `keras.applications` models (not exported by Keras).

    Returns:
        dict name -> class for `CustomScaleLayer` (Inception-ResNet),
        `LayerScale` and `StochasticDepth` (ConvNeXt).
    """
    from keras.src.applications import convnext
    from keras.src.applications import inception_resnet_v2

    return {
        "CustomScaleLayer": inception_resnet_v2.CustomScaleLayer,
        "LayerScale": convnext.LayerScale,
        "StochasticDepth": convnext.StochasticDepth,
    }


def optimizer_slots(optimizer, variable):
    """The optimizer's per-variable state for `variable` (RePr zeroes the
    momentum and moments of re-initialised filters).

    Keras optimizers keep one list per kind of slot (SGD `momentums`, Adam
    `_momentums` and `_velocities`, ...), aligned with the trainable
    variables they were built for, and find a variable's place with
    `_get_variable_index`; there is no public accessor for a variable's
    slots. `LossScaleOptimizer` is looked through.

    Returns:
        A list of `(attribute_name, slot_variable)`; empty when the
        optimizer is not built or does not train `variable`.

    Example:

    >>> for name, slot in optimizer_slots(model.optimizer, conv.kernel):
    ...     slot.assign(tf.zeros_like(slot))
    """
    optimizer = _innermost(optimizer)
    trained = getattr(optimizer, "_trainable_variables", None)
    if not trained:
        return []
    try:
        index = optimizer._get_variable_index(variable)
    except (KeyError, AttributeError):
        return []
    slots = []
    for name, value in vars(optimizer).items():
        if name in ("_trainable_variables", "_variables") or not isinstance(
            value, (list, tuple)
        ) or len(value) != len(trained):
            continue
        slot = value[index]
        if (
            isinstance(slot, (keras.Variable, tf.Variable))
            and slot is not variable
            and tuple(slot.shape) == tuple(variable.shape)
        ):
            slots.append((name, slot))
    return slots


def optimizer_learning_rate(optimizer):
    """What `optimizer` computes its learning rate from, or None.

    Keras optimizers keep it in `_learning_rate`: a number, a variable
    (a constant that callbacks such as `LearningRateScheduler` may
    change), a `LearningRateSchedule` of the step, or a callable of no
    argument; the public `learning_rate` property only gives the current
    value. `LossScaleOptimizer` (mixed precision) is looked through: its
    own `_learning_rate` is a placeholder.

    Example:

    >>> optimizer_learning_rate(keras.optimizers.SGD(0.1))  # a variable
    """
    return getattr(_innermost(optimizer), "_learning_rate", None)


def _innermost(optimizer):
    """The optimizer a `LossScaleOptimizer` (mixed precision) wraps."""
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return optimizer


def configure_coordination_heartbeat(timeout_seconds, cluster_resolver=None):
    """Sets how long a multi-worker cluster waits for a silent worker.

    `MultiWorkerMirroredStrategy` starts TensorFlow's coordination service
    with its default heartbeat timeout (10 s) and no argument to change
    it; a worker that a loaded machine starves of CPU for longer is
    declared dead and the whole job aborts ("heartbeat timeout"). The
    strategy keeps a service that is already configured, so this
    configures it first, exactly as the strategy would
    (`tensorflow.python.distribute.collective_all_reduce_strategy`), with
    the longer timeout; the setting is only reachable through
    `tensorflow.python.eager.context`. Call it before the strategy is
    created and before any TensorFlow operation runs.

    Args:
        timeout_seconds: Heartbeat timeout in seconds (> 0).
        cluster_resolver: The cluster (default: from `TF_CONFIG`).

    Returns:
        False (nothing configured) when the process is not part of a
        cluster of chief/worker tasks, True otherwise.

    Example:

    >>> configure_coordination_heartbeat(120)
    >>> strategy = tf.distribute.MultiWorkerMirroredStrategy()
    """
    if isinstance(timeout_seconds, bool) or not isinstance(
            timeout_seconds, (int, float)) or not timeout_seconds > 0:
        raise ValueError(
            "The heartbeat timeout must be a number of seconds > 0; got "
            f"{timeout_seconds!r}."
        )
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    resolver = (cluster_resolver or
                tf.distribute.cluster_resolver.TFConfigClusterResolver())
    spec = resolver.cluster_spec()
    jobs = [job for job in ("chief", "worker") if job in spec.jobs]
    if resolver.task_type not in jobs:
        return False
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=[
            # The proto module context.py itself configures the service with.
            context.coordination_config_pb2.CoordinatedJob(
                name=job, num_tasks=spec.num_tasks(job))
            for job in jobs
        ],
        heartbeat_timeout_in_ms=int(timeout_seconds * 1000),
    )
    return True
