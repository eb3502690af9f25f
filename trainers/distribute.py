"""Builds the one `tf.distribute.Strategy` a training run uses.

Everything here is stock `tf.distribute`; this module only maps the
`--strategy` flag to the right constructor, splits the CPU into logical
devices for testing, and answers the questions the training loop asks about
the cluster (which task is the chief, where should this task write).

Example:

>>> configure_cpu_devices(2)          # before any other TensorFlow op
>>> strategy = get_strategy("mirrored")
>>> strategy.num_replicas_in_sync
2
"""

import json
import os
import tempfile

import tensorflow as tf

from keras_slim import compat

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def configure_cpu_devices(num_devices):
    """Splits the physical CPU into `num_devices` logical devices.

    Lets `MirroredStrategy` run several replicas on a machine without
    accelerators (tests, debugging). Must run before TensorFlow executes any
    op: the device list is frozen once the runtime is initialised.

    Args:
        num_devices: Logical CPU devices to create; 0 or 1 leaves the CPU as
            it is.

    Raises:
        RuntimeError: if the TensorFlow runtime is already initialised with
            a different number of CPU devices.
    """
    num_devices = int(num_devices)
    if num_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices
        )
    except RuntimeError as err:
        if len(tf.config.list_logical_devices("CPU")) == num_devices:
            return  # already configured identically (e.g. called twice)
        raise RuntimeError(
            f"Cannot split the CPU into {num_devices} logical devices: the "
            "TensorFlow runtime is already initialised. Call "
            "configure_cpu_devices before any other TensorFlow operation."
        ) from err


def get_strategy(name="default", tpu_address="", heartbeat_timeout=0):
    """Returns the `tf.distribute.Strategy` named by `--strategy`.

    Args:
        name: "default" (one device, no distribution), "mirrored"
            (synchronous data parallelism over the local GPUs, or over the
            logical CPU devices when there are no GPUs), "multi_worker"
            (`MultiWorkerMirroredStrategy`; the cluster comes from the
            `TF_CONFIG` environment variable) or "tpu".
        tpu_address: TPU name or grpc address for "tpu" ("" = local TPU).
        heartbeat_timeout: For "multi_worker": seconds a worker may stay
            silent before the cluster aborts (0: TensorFlow's default).

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: for an unknown name.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # Without GPUs MirroredStrategy would pick /cpu:0 alone; name every
        # logical CPU device so `--num_cpu_devices` gives real replicas. Its
        # default CPU all-reduce (RING collectives) fixes each exchange's
        # shape at the first step of a multi-step tf.function call, while
        # synchronized BN exchanges statistics whose length follows the
        # random width of each step: reduce on one device instead.
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        return tf.distribute.MirroredStrategy(
            devices=[d.name for d in tf.config.list_logical_devices("CPU")],
            cross_device_ops=tf.distribute.ReductionToOneDevice(),
        )
    if name == "multi_worker":
        if heartbeat_timeout:
            compat.configure_coordination_heartbeat(heartbeat_timeout)
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=tpu_address
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(
        f"Unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}."
    )


def task_info(strategy):
    """`(task_type, task_id)` of this process (None, None without a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy):
    """Whether this process writes checkpoints, summaries and reports.

    Single-process strategies are always chief. In a multi-worker cluster the
    chief is the "chief" task, or worker 0 when the cluster has no chief.
    """
    task_type, task_id = task_info(strategy)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def write_dir(model_dir, strategy):
    """Where this task writes checkpoints: `model_dir` for the chief.

    Every worker of a `MultiWorkerMirroredStrategy` must take part in a save
    (reading synchronised variables may need collective ops), but only the
    chief's copy is kept: the others write to a private temporary directory
    that the caller deletes.
    """
    if is_chief(strategy):
        return model_dir
    _, task_id = task_info(strategy)
    return tempfile.mkdtemp(prefix=f"keras_slim_worker{task_id}_")
