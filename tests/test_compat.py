"""The Keras internals keras_slim relies on (keras_slim.compat) still exist.

If a Keras upgrade moves one of them, this file fails naming it.
"""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_slim import compat
from keras_slim import graph


def test_a_built_layer_can_create_variables_while_unlocked():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    with compat.creating_variables_after_build(layer):
        extra = layer.add_weight(name="extra", shape=(4,))
    assert any(w is extra for w in layer.weights)
    assert layer._tracker.locked  # locked again afterwards


def test_keras_mask_reads_the_mask_keras_attaches():
    inputs = keras.Input((5,))
    masked = keras.layers.Embedding(10, 3, mask_zero=True)(inputs)
    assert compat.keras_mask(masked) is not None
    assert compat.keras_mask(keras.layers.Dense(3)(masked[:, 0])) is None
    assert compat.keras_mask(np.zeros(3)) is None


def test_operation_classes_are_what_a_functional_graph_records():
    nn, numpy = compat.operation_modules()
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.ops.add(keras.ops.relu(inputs), 1.0))
    calls, _ = graph.trace(model)
    recorded = {type(call.layer) for call in calls}
    assert {nn.Relu, numpy.Add} <= recorded


def test_application_layers_are_the_ones_keras_applications_use():
    classes = compat.application_layers()
    model = keras.applications.ConvNeXtTiny(
        weights=None, input_shape=(32, 32, 3), classes=2)
    assert classes["LayerScale"] in {type(layer) for layer in model.layers}
    assert issubclass(classes["StochasticDepth"], keras.layers.Layer)
    assert classes["CustomScaleLayer"].__name__ == "CustomScaleLayer"


def test_optimizer_slots_are_the_momentum_and_moments_of_a_variable():
    dense = keras.layers.Dense(3)
    dense.build((None, 2))
    for optimizer, expected in ((keras.optimizers.SGD(momentum=0.9), 1),
                                (keras.optimizers.Adam(), 2)):
        optimizer.build(dense.trainable_variables)
        slots = compat.optimizer_slots(optimizer, dense.kernel)
        assert len(slots) == expected, slots
        assert all(tuple(s.shape) == (2, 3) for _, s in slots)
        assert all(s is not dense.kernel for _, s in slots)
    # Not trained by this optimizer (or not built): no slots, no error.
    other = keras.Variable(np.zeros((2, 3)))
    assert compat.optimizer_slots(optimizer, other) == []
    assert compat.optimizer_slots(keras.optimizers.Adam(), dense.kernel) == []


def test_coordination_heartbeat_configures_the_service_the_strategy_keeps():
    # In a fresh process: the setting is global to TensorFlow's context.
    script = textwrap.dedent("""
        import tensorflow as tf
        from tensorflow.python.eager import context
        from keras_slim import compat

        def resolver(task_type):
            return tf.distribute.cluster_resolver.SimpleClusterResolver(
                tf.train.ClusterSpec({"worker": ["localhost:1", "localhost:2"]}),
                task_type=task_type, task_id=1)

        assert not compat.configure_coordination_heartbeat(60, resolver("ps"))
        assert context.context().coordination_service is None
        assert compat.configure_coordination_heartbeat(60, resolver("worker"))
        config = context.context().coordination_service
        print(config.heartbeat_timeout_in_ms, config.service_leader,
              [(j.name, j.num_tasks) for j in config.coordinated_job_list])
    """)
    result = subprocess.run([sys.executable, "-c", script], text=True,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[-2] == (
        "60000 /job:worker/replica:0/task:0 [('worker', 2)]")


@pytest.mark.parametrize("timeout", [0, -1, "60", True])
def test_coordination_heartbeat_refuses_a_timeout_that_is_not_positive(
        timeout):
    with pytest.raises(ValueError, match="seconds > 0"):
        compat.configure_coordination_heartbeat(timeout)
