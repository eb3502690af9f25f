"""Boosted early-exit training under MirroredStrategy (2 CPU replicas)
gives the weights one device gives.

Logical devices must be configured before TensorFlow runs any op, so the
check runs in a fresh subprocess (as tests/test_fit_distributed.py does).
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
    from tests.early_exit_testing import early_exit_model
    from tests.testing import digits

    x, y = digits(256)
    report = {}
    for name, kwargs in (("boosted", {}),
                         ("width_x_depth", {"width_range": (0.5, 1.0)})):
        keras.utils.set_random_seed(0)
        results = []
        initial = None
        for strategy in (tf.distribute.get_strategy(),
                         tf.distribute.MirroredStrategy(["/cpu:0",
                                                         "/cpu:1"])):
            with strategy.scope():
                model = early_exit_model(bn=False, head_bn=False, **kwargs)
                if initial is None:
                    initial = model.get_weights()
                model.set_weights(initial)
                model.compile(keras.optimizers.SGD(0.1),
                              metrics=["accuracy"], sandwich_size=2)
            history = model.fit(x, y, batch_size=64, epochs=2,
                                shuffle=False, verbose=0)
            results.append((model.get_weights(), history.history))
        (one, h_one), (two, h_two) = results
        # Skip the (empty) channel-count variable of a one-width network.
        pairs = [(a, b, c) for a, b, c in zip(one, two, initial) if a.size]
        one, two, initial = zip(*pairs)
        report[name] = {
            "replicas": 2,
            "max_weight_diff": max(float(np.abs(a - b).max())
                                   for a, b in zip(one, two)),
            "moved": max(float(np.abs(a - b).max())
                         for a, b in zip(one, initial)),
            "loss_exit2": [h_one["loss_exit2"][-1], h_two["loss_exit2"][-1]],
            "keys": sorted(h_two),
        }
    print(json.dumps(report))
    """
)


def test_mirrored_strategy_gives_the_weights_of_one_device():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for name, figures in report.items():
        assert figures["moved"] > 1e-2, name  # training changed the weights
        assert figures["max_weight_diff"] < 1e-5, (name, figures)
        one, two = figures["loss_exit2"]
        assert abs(one - two) < 1e-4 * max(1.0, abs(one)), (name, figures)
        assert "accuracy_exit3" in figures["keys"]
    assert "loss_w0.50" in report["width_x_depth"]["keys"]
