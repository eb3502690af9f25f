"""Test helpers: `LayerTestCase` (KerasHub's TestCase shape), data, closeness."""

import copy
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


class LayerTestCase:
    """Base class of every layer test (the shape of KerasHub's TestCase).

    `run_layer_test` checks the Keras layer contract and what a slim layer
    adds to it: eager and symbolic calls agree on the output shape, weight
    counts, `get_config` and `serialize_keras_object` round trips, one fit
    step moves the trainable weights, `.keras` save/load is exact, a mixed
    precision policy computes in float16 with float32 variables, and, for a
    slim layer, the same at a narrow width (inside an `ActiveWidth` scope).
    """

    def run_layer_test(
        self,
        layer_cls,
        init_kwargs,
        input_shape,
        tmp_path,
        *,
        expected_output_shape,
        expected_num_trainable_weights,
        expected_num_non_trainable_weights,
        narrow=None,
        run_training_check=True,
        run_mixed_precision_check=True,
    ):
        """Runs the layer contract (see the class docstring).

        Args:
            layer_cls: The layer class under test.
            init_kwargs: Constructor arguments, or a function returning them
                (for arguments that must be fresh objects, e.g. a layer).
            input_shape: Input shape without the batch dimension.
            tmp_path: A pytest tmp_path for the saved model.
            expected_output_shape: Output shape without the batch dimension.
            expected_num_trainable_weights: Trainable weights once built.
            expected_num_non_trainable_weights: The others.
            narrow: For slim layers, `(channels, input_shape, output_shape)`:
                the `ActiveWidth` channels dict, the narrow input shape and
                the output shape expected there (without the batch axis).
            run_training_check: Fit one step and check the weights moved.
            run_mixed_precision_check: Run under "mixed_float16".

        Returns:
            The built layer.
        """
        from keras_slim import layers as slim_layers

        def make():
            kwargs = init_kwargs() if callable(init_kwargs) else init_kwargs
            return layer_cls(**kwargs)

        batch = 4
        expected = (batch,) + tuple(expected_output_shape)
        x = _random(input_shape, batch)

        # Eager and symbolic calls; weight counts.
        layer = make()
        y = keras.ops.convert_to_numpy(layer(x))
        assert y.shape == expected, (y.shape, expected)
        assert np.all(np.isfinite(y))
        assert len(layer.trainable_weights) == expected_num_trainable_weights
        assert (len(layer.non_trainable_weights)
                == expected_num_non_trainable_weights)
        symbolic = make()(keras.Input(input_shape))
        assert tuple(symbolic.shape) == (None,) + expected[1:]

        # Config and serialization round trips give the same layer.
        config = layer.get_config()
        # A copy: Keras' Wrapper.from_config pops keys of the dict it gets.
        assert (layer_cls.from_config(copy.deepcopy(config)).get_config()
                == config)
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(layer))
        assert type(restored) is layer_cls
        restored(x)
        restored.set_weights(layer.get_weights())
        assert_close(restored(x), y, atol=0)

        # A narrow width: eager and symbolic shapes agree.
        if narrow is not None:
            channels, narrow_input, narrow_output = narrow
            scope = slim_layers.ActiveWidth(channels=channels)
            with slim_layers.active_width(scope):
                out = keras.ops.convert_to_numpy(
                    layer(_random(narrow_input, batch)))
                sym = layer(keras.Input(narrow_input))
            assert out.shape == (batch,) + tuple(narrow_output)
            assert tuple(sym.shape) == (None,) + tuple(narrow_output)
            assert np.all(np.isfinite(out))

        # One fit step changes the trainable weights.
        inputs = keras.Input(input_shape)
        model = keras.Model(inputs, make()(inputs))
        if run_training_check and model.trainable_weights:
            before = [w.numpy().copy() for w in model.trainable_weights]
            model.compile("sgd", "mse")
            target = np.ones(expected, "float32")
            model.fit(x, target, epochs=1, batch_size=batch, verbose=0)
            after = [w.numpy() for w in model.trainable_weights]
            assert any(not np.allclose(a, b) for a, b in zip(before, after))

        # .keras save/load gives identical outputs.
        path = tmp_path / f"{layer_cls.__name__}.keras"
        model.save(path)
        loaded = keras.models.load_model(path)
        assert_close(loaded.predict(x, verbose=0),
                     model.predict(x, verbose=0), atol=0)

        # Mixed precision: computes in float16, keeps float32 variables.
        if run_mixed_precision_check:
            keras.config.set_dtype_policy("mixed_float16")
            try:
                half = make()
                out = half(x)
                assert (keras.backend.standardize_dtype(out.dtype)
                        == "float16")
                assert all(w.dtype == "float32" for w in half.weights)
            finally:
                keras.config.set_dtype_policy("float32")
        return layer


def _random(shape, batch, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch,) + tuple(shape)).astype("float32")


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
