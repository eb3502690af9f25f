"""The README's Python examples run exactly as written.

Each ```python block of README.md is executed in a fresh namespace in which
only the names the README leaves to the reader (its data sets, `base`, your
own layer classes, the model RePr trains) are filled in, with small random
CIFAR-shaped data: a README example that fails, names a result it cannot
have, or trains with the wrong loss shows up here.
"""

import pathlib
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
CLASSES = 10


def python_blocks(text):
    """`(first line number, code)` of every ```python block."""
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.M | re.S):
        line = text[: match.start()].count("\n") + 2
        blocks.append((line, match.group(1)))
    return blocks


BLOCKS = python_blocks(README.read_text())


def _images(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n, 32, 32, 3)).astype("float32")
    return x, rng.integers(0, CLASSES, n).astype("int32")


def _dataset(n, seed):
    return tf.data.Dataset.from_tensor_slices(_images(n, seed)).batch(32)


class MyChannelScale(keras.layers.Layer):
    """A learned scale per channel (the README's "your own layer")."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],),
                                     initializer="ones")

    def call(self, x):
        return x * self.scale


class MyActivation(keras.layers.Layer):
    def call(self, x):
        return keras.ops.relu(x) - 0.1 * keras.ops.relu(-x)


def _base():
    """A model with the layer names the README's options name."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.Conv2D(48, 1, activation="relu", name="expand1")(x)
    x = keras.layers.DepthwiseConv2D(3)(x)
    x = keras.layers.Conv2D(16, 1, name="head")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(x))


def _repr_model():
    """A small conv network, compiled, as a RePr user would have."""
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(16, 3, activation="relu", name="conv1"),
        keras.layers.Conv2D(16, 3, activation="relu", name="conv2"),
        keras.layers.Conv2D(16, 3, activation="relu", name="conv3"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(CLASSES),
    ])
    model.compile(
        keras.optimizers.SGD(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def reader_names():
    """What a reader supplies: data, `base`, their layers, their model."""
    x_val, y_val = _images(64, 3)
    x_held_out, y_held_out = _images(32, 4)
    return {
        "train_ds": _dataset(64, 0),
        "calib_ds": _dataset(64, 1),
        "test_ds": _dataset(64, 2),
        "x_val": x_val,
        "y_val": y_val,
        "x_test": _images(16, 5)[0],
        "x_held_out": x_held_out,
        "y_held_out": y_held_out,
        "base": _base(),
        "MyChannelScale": MyChannelScale,
        "MyActivation": MyActivation,
        "model": _repr_model(),
    }


def _slow(line, code):
    # The AutoSlim example trains a ResNet-20 supernet and searches it (~1 min).
    marks = [pytest.mark.slow] if "autoslim" in code else []
    return pytest.param(code, id=f"line{line}", marks=marks)


def test_readme_has_the_examples_this_file_runs():
    assert len(BLOCKS) >= 5
    assert any("keras_slim.slim(" in code for _, code in BLOCKS)


@pytest.mark.parametrize("code", [_slow(*block) for block in BLOCKS])
def test_readme_example_runs_as_written(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write "out/", "stages/", ...
    namespace = reader_names()
    if "import keras\n" not in code and "keras." in code:
        # A block that continues the one before it (same imports).
        namespace.update(keras=keras, keras_slim=__import__("keras_slim"))
    with warnings.catch_warnings():
        # A warning the README's reader would see is a defect of the example
        # (a loss that reads the wrong outputs, an uncalibrated width);
        # third-party deprecations are not.
        warnings.filterwarnings("error", module="keras_slim")
        warnings.filterwarnings("error", category=UserWarning,
                                message=".*(keras_slim|expects|calibrat).*")
        exec(compile(code, str(README), "exec"), namespace)
