"""Test helpers in the spirit of Keras' `run_layer_test` (KerasHub style)."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import keras

REPO = pathlib.Path(__file__).resolve().parents[1]


def assert_close(actual, expected, atol=1e-5, msg=""):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape, msg)
    diff = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    assert diff <= atol, f"max abs diff {diff} > {atol} {msg}"


def digits(n=None):
    """sklearn digits as float32 (N, 8, 8, 1) in [0, 1] and int labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images[..., None] / 16.0).astype("float32")
    y = data.target.astype("int32")
    return (x[:n], y[:n]) if n else (x, y)


def run_layer_test(layer_cls, init_kwargs, input_shape, tmp_path,
                   expected_output_channels=None, fit_kwargs=None):
    """Builds, calls, fits one step, round-trips config and `.keras` files.

    Args:
        layer_cls: The layer class under test.
        init_kwargs: Constructor arguments.
        input_shape: Input shape without the batch dimension.
        tmp_path: A pytest tmp_path for the saved model.
        expected_output_channels: Asserted on the output's last dimension.

    Returns:
        The built layer.
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4,) + tuple(input_shape)).astype("float32")

    # Build and call.
    layer = layer_cls(**init_kwargs)
    y = keras.ops.convert_to_numpy(layer(x))
    if expected_output_channels is not None:
        assert y.shape[-1] == expected_output_channels
    assert np.all(np.isfinite(y))

    # get_config round trip gives an equivalent layer.
    config = layer.get_config()
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config

    # One fit step changes the trainable weights.
    inputs = keras.Input(input_shape)
    outputs = layer_cls(**init_kwargs)(inputs)
    model = keras.Model(inputs, outputs)
    if model.trainable_weights:
        before = [w.numpy().copy() for w in model.trainable_weights]
        model.compile("sgd", "mse")
        target = np.ones((4,) + tuple(outputs.shape[1:]), "float32")
        model.fit(x, target, epochs=1, batch_size=4, verbose=0)
        after = [w.numpy() for w in model.trainable_weights]
        assert any(not np.allclose(a, b) for a, b in zip(before, after))

    # .keras save/load gives identical outputs.
    path = tmp_path / f"{layer_cls.__name__}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert_close(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                 atol=0)

    # Mixed precision: computes in float16, keeps float32 variables.
    keras.config.set_dtype_policy("mixed_float16")
    try:
        half = layer_cls(**init_kwargs)
        out = half(x)
        assert keras.backend.standardize_dtype(out.dtype) == "float16"
        assert all(w.dtype == "float32" for w in half.weights)
    finally:
        keras.config.set_dtype_policy("float32")
    return layer


def run_console_script(tmp_path, name, module, *flags, timeout=300):
    """Runs `module.run` as the console script `name` that pip would write.

    pip's wrapper (`[project.scripts]`) sets `sys.argv[0]` to the script's
    path, which absl uses to find the program's flags for `--help`: running
    `python -m module` does not exercise that. Returns the
    `subprocess.CompletedProcess` (text output captured).
    """
    script = pathlib.Path(tmp_path) / name
    script.write_text(
        "import re\nimport sys\n"
        f"from {module} import run\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', "
        "sys.argv[0])\n"
        "    sys.exit(run())\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(
               [str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, str(script), *flags], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=timeout)
