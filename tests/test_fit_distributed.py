"""model.fit of a SlimmableModel under MirroredStrategy (2 CPU replicas).

Logical devices must be configured before TensorFlow runs any op, so the
check runs in a fresh subprocess.
"""

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    import keras_slim
    from tests.testing import digits

    keras.utils.set_random_seed(0)
    x, y = digits(512)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(8, 3, padding="same")(inputs)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        base = keras.Model(inputs, keras.layers.Dense(10)(h))
        model = keras_slim.slim(base, width_range=(0.25, 1.0),
                                bn_momentum=0.9)
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
            from_logits=True), metrics=["accuracy"])
    history = model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    bn = model.bn_layers[0]
    replicas = [v.numpy() for v in bn.moving_mean.value.values]
    keras_slim.calibrate_bn(model, x, widths=[0.25], verbose=0)
    model.set_width(0.25)
    accuracy = model.evaluate(x, y, verbose=0)[1]
    print(json.dumps({
        "replicas": len(replicas),
        "bn_gap": float(np.max(np.abs(replicas[0] - replicas[1]))),
        "bn_moved": float(np.max(np.abs(replicas[0]))),
        "keys": sorted(history.history),
        "accuracy": accuracy,
    }))
    """
)


def test_fit_under_mirrored_strategy_keeps_bn_replicas_in_sync():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["bn_moved"] > 0  # statistics were actually updated
    assert report["bn_gap"] == 0.0  # ... identically on both replicas
    assert "accuracy_w0.25" in report["keys"]
    assert 0.0 <= report["accuracy"] <= 1.0
