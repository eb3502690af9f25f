"""The conversion check of a `keras.applications` model.

`tests/test_applications.py` runs it on one model of each CNN family in CI;
`benchmarks/applications_sweep.py` runs it on every model of
`keras.applications` and writes the README's table.
"""

import tempfile
import time
import warnings

import numpy as np
import keras

import keras_slim

def _family_builders():
    """One model per CNN family of keras.applications, as small as the
    family's own constructor allows (same block code, fewer blocks or
    channels), so that CI checks every family in a few minutes.
    `benchmarks/applications_sweep.py` checks every named model in full.

    Returns:
        dict family -> (what it is, input size, `fn() -> keras.Model`).
    """
    from keras.src.applications import convnext
    from keras.src.applications import densenet
    from keras.src.applications import efficientnet
    from keras.src.applications import efficientnet_v2
    from keras.src.applications import inception_resnet_v2
    from keras.src.applications import nasnet
    from keras.src.applications import resnet

    apps = keras.applications
    common = dict(weights=None, classes=10)

    def sized(size):
        return dict(common, input_shape=(size, size, 3))

    def resnet_v(version):
        stack = getattr(resnet, f"stack_residual_blocks_v{version}")

        def stack_fn(x):
            # v2 stacks end with their own strided block: 2 blocks each.
            x = stack(x, 16, 2, stride1=1, name="conv2")
            return stack(x, 32, 2, name="conv3")

        return lambda: resnet.ResNet(
            stack_fn, version == 2, version == 1, name=f"resnet_v{version}",
            **sized(32))

    def small_inception_resnet():
        # The family's own blocks, one of each type (the full network has
        # 10 + 20 + 10), on a smaller stem and reductions.
        conv_bn = inception_resnet_v2.conv2d_bn
        block = inception_resnet_v2.inception_resnet_block
        inputs = keras.Input((32, 32, 3))
        x = conv_bn(inputs, 32, 3, strides=2)
        x = block(x, scale=0.17, block_type="block35", block_idx=1)
        x = conv_bn(x, 64, 3, strides=2)
        x = block(x, scale=0.1, block_type="block17", block_idx=1)
        x = conv_bn(x, 96, 3, strides=2)
        x = block(x, scale=0.2, block_type="block8", block_idx=1)
        x = block(x, scale=1.0, activation=None, block_type="block8",
                  block_idx=2)
        x = conv_bn(x, 128, 1, name="conv_7b")
        x = keras.layers.GlobalAveragePooling2D()(x)
        outputs = keras.layers.Dense(10, activation="softmax")(x)
        return keras.Model(inputs, outputs, name="inception_resnet_small")

    return {
        "MobileNet": ("MobileNet alpha=0.25", 32,
                      lambda: apps.MobileNet(alpha=0.25, **sized(32))),
        "MobileNetV2": ("MobileNetV2 alpha=0.35", 32,
                        lambda: apps.MobileNetV2(alpha=0.35, **sized(32))),
        "MobileNetV3": ("MobileNetV3Small", 32,
                        lambda: apps.MobileNetV3Small(**sized(32))),
        "EfficientNet": ("EfficientNet, B0 blocks at depth x0.1, width x0.5",
                         32, lambda: efficientnet.EfficientNet(
                             0.5, 0.1, 32, name="efficientnet_small",
                             **sized(32))),
        "EfficientNetV2": ("EfficientNetV2, B0 blocks at depth x0.1, width "
                           "x0.5", 32, lambda: efficientnet_v2.EfficientNetV2(
                               0.5, 0.1, 32, name="efficientnetv2-b0",
                               **sized(32))),
        "ResNet": ("ResNet (v1 bottleneck blocks, 2 stages of 2)", 32,
                   resnet_v(1)),
        "ResNetV2": ("ResNetV2 (pre-activation blocks, 2 stages of 2)", 32,
                     resnet_v(2)),
        "DenseNet": ("DenseNet, blocks [1, 2, 1, 1]", 32,
                     lambda: densenet.DenseNet([1, 2, 1, 1], **sized(32))),
        "Inception": ("InceptionV3", 75,
                      lambda: apps.InceptionV3(**sized(75))),
        "InceptionResNet": ("InceptionResNetV2 blocks (one of each type)",
                            32, small_inception_resnet),
        "Xception": ("Xception", 71, lambda: apps.Xception(**sized(71))),
        "NASNet": ("NASNet, 1 block per stage, 96 penultimate filters", 32,
                   lambda: nasnet.NASNet(
                       penultimate_filters=96, num_blocks=1,
                       stem_block_filters=16, default_size=32,
                       **sized(32))),
        "ConvNeXt": ("ConvNeXt, depths [1, 1, 1, 1], dims 16-128", 32,
                     lambda: convnext.ConvNeXt(
                         [1, 1, 1, 1], [16, 32, 64, 128], default_size=32,
                         name="convnext_small_test", **sized(32))),
        "VGG": ("VGG16", 32, lambda: apps.VGG16(**sized(32))),
    }


# Widths of the stripped-vs-slimmable comparison (besides 1.0).
CHECK_WIDTHS = (0.37, 0.5, 0.81)


def builders():
    """Every model builder of `keras.applications`, by name."""
    return {
        name: getattr(keras.applications, name)
        for name in dir(keras.applications) if name[0].isupper()
    }


def check_conversion(name, input_size, export_dir=None, fit=True,
                     widths=CHECK_WIDTHS, tolerance=1e-4, build=None,
                     run_eagerly=False, **kwargs):
    """Converts one application and checks everything a user relies on.

    Args:
        name: A `keras.applications` builder name, e.g. "MobileNetV3Small"
            (or a label, with `build`).
        input_size: Square input size (with `weights=None`, 10 classes).
        export_dir: Where to export width 0.5 to TFLite (verified against
            Keras by the exporter); None skips the export.
        fit: Run one sandwich-rule `fit` step.
        run_eagerly: Run that step eagerly (tracing the sandwich step of a
            model with hundreds of layers takes most of a minute).
        widths: Widths at which `strip(model, w)` must equal the model.
        tolerance: Allowed max |difference| (the outputs are probabilities).
        build: `fn() -> keras.Model` instead of the named builder.
        **kwargs: More arguments of the builder.

    Returns:
        A dict: converts, exact_diff (width 1.0 vs the original), strip_diff
        (worst over `widths`), params (original), params_at_half,
        macs_at_half, fit_loss, tflite_verified, seconds (cumulative
        after each stage: seconds_convert, seconds_export). Raises on a
        failed check.
    """
    started = time.time()
    if build is None:
        base = builders()[name](
            weights=None, input_shape=(input_size, input_size, 3),
            classes=10, **kwargs,
        )
    else:
        base = build()
    model = keras_slim.slim(base, width_range=(0.25, 1.0), divisor=8)
    # Inputs in [0, 1]: raw 0..255 pixels through a randomly initialised
    # DenseNet overflow float32 in TFLite's fused kernels.
    x = np.random.default_rng(0).uniform(
        0, 1, (2, input_size, input_size, 3)).astype("float32")
    exact = float(np.abs(model(x) - base(x)).max())
    assert exact <= tolerance, f"{name}: width 1.0 differs by {exact}"
    worst, stripped = 0.0, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uncalibrated widths: as intended
        for width in widths:
            model.set_width(width)
            stripped[width] = keras_slim.strip(model, width)
            diff = float(np.abs(stripped[width](x) - model(x)).max())
            assert diff <= tolerance, f"{name}: strip({width}) differs by {diff}"
            worst = max(worst, diff)
        model.set_width(1.0)
    half = keras_slim.profile(stripped[0.5])
    result = {
        "model": name,
        "input_size": input_size,
        "converts": True,
        "exact_diff": exact,
        "strip_diff": worst,
        "params": int(base.count_params()),
        "params_at_half": half["params"],
        "macs_at_half": half["macs"],
        "fit_loss": None,
        "tflite_verified": None,
    }
    result["seconds_convert"] = round(time.time() - started, 1)
    if export_dir is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            manifest = keras_slim.export.to_tflite(
                model, export_dir, widths=[0.5],
                representative_data=x,
            )
        result["tflite_verified"] = manifest["exports"][0]["max_abs_diff"] <= (
            manifest["exports"][0]["tolerance"])
    result["seconds_export"] = round(time.time() - started, 1)
    if fit:
        model.compile(
            keras.optimizers.SGD(1e-3),
            keras.losses.SparseCategoricalCrossentropy(),
            sandwich_size=3,
            run_eagerly=run_eagerly,
        )
        history = model.fit(x, np.array([1, 2]), epochs=1, verbose=0)
        result["fit_loss"] = float(history.history["loss"][-1])
        assert np.isfinite(result["fit_loss"]), f"{name}: loss not finite"
    result["seconds"] = round(time.time() - started, 1)
    return result


def check_in_temp_dir(name, input_size, **kwargs):
    with tempfile.TemporaryDirectory() as out:
        return check_conversion(name, input_size, export_dir=out, **kwargs)
