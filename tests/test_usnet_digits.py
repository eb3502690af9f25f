"""End to end: a US-Net trained on sklearn digits works at every width."""

import contextlib

import keras
import pytest

import keras_slim
from keras_slim import data


def digits_cnn():
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for channels in (32, 64):
        x = keras.layers.Conv2D(channels, 3, padding="same")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


@pytest.mark.slow
def test_usnet_reaches_95_percent_at_every_width_after_calibration():
    train, test, _ = data.load("digits", batch_size=64, seed=0)
    model = keras_slim.slim(digits_cnn(), width_range=(0.25, 1.0),
                            bn_momentum=0.9)
    model.compile(
        keras.optimizers.Adam(2e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        sandwich_size=4,
        inplace_distillation=True,
    )
    model.fit(train, epochs=30, verbose=0)
    widths = [0.25, 0.5, 0.75, 1.0]

    uncalibrated = {}
    for width in widths:
        with pytest.warns(UserWarning) if width < 1 else (
                contextlib.nullcontext()):
            model.set_width(width)
        uncalibrated[width] = model.evaluate(test, verbose=0)[1]

    keras_slim.calibrate_bn(model, train, widths=widths, verbose=0)
    calibrated = {}
    for width in widths:
        model.set_width(width)
        calibrated[width] = model.evaluate(test, verbose=0)[1]
    print("uncalibrated", uncalibrated, "calibrated", calibrated)
    for width in widths:
        assert calibrated[width] >= 0.95, (width, calibrated)
    assert calibrated[0.25] > uncalibrated[0.25], (calibrated, uncalibrated)

