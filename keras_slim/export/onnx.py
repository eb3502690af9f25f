"""ONNX export: one verified `.onnx` per width, or one width-dynamic graph.

Per-width files go through Keras' own exporter (`model.export(format=
"onnx")`, tf2onnx underneath, batch dimension left dynamic); the one graph
that takes the width as an input is converted with `tf2onnx` from a
`tf.function`, which Keras' exporter cannot express. Files are checked with
onnxruntime against Keras right after they are written.
"""

import contextlib
import functools
import os

import numpy as np

from keras_slim import graph
from keras_slim import files
from keras_slim.export import manifest as mf
from keras_slim.export import runtimes
from keras_slim.export import staged
from keras_slim.export.converters import check_opset
from keras_slim.export.converters import export_onnx
from keras_slim.export.converters import function_to_onnx
from keras_slim.stripping import strip

# tf2onnx 1.17 emits opsets 13..18 with TF 2.21 (it refuses newer ones).
def run_onnx(path, *inputs):
    """Runs an ONNX file with onnxruntime (CPU) on positional inputs.

    The images (first input) are checked as by `run_tflite`: the file's
    shape, float values, and the training range recorded in the manifest
    next to the file.

    Returns:
        The first output as a numpy array.

    Raises:
        ValueError: for images of another shape, integer images, or values
            far outside the recorded training range.

    Example:

    >>> logits = keras_slim.export.run_onnx("out/net_w0.5.onnx", x)
    >>> logits = keras_slim.export.run_onnx("net_any.onnx", x,
    ...                                     np.array(0.5, np.float32))
    """
    session = runtimes.onnx_session(path)
    specs = session.get_inputs()
    if len(inputs) != len(specs):
        raise ValueError(
            f"'{os.fspath(path)}' takes {len(specs)} input(s) "
            f"({[spec.name for spec in specs]}); got {len(inputs)}."
        )
    images = mf.check_run_inputs(
        inputs[0],
        [d if isinstance(d, int) else None for d in specs[0].shape],
        mf.manifest_input(path),
        f"'{os.fspath(path)}'",
    )
    feeds = {specs[0].name: images}
    feeds.update({
        spec.name: np.asarray(value, "float32")
        for spec, value in zip(specs[1:], inputs[1:])
    })
    return session.run(None, feeds)[0]


def to_onnx(model, out_dir, widths=None, opset=17, tolerance=None,
            fold_bn=False, input_range=None, **early_exit_kwargs):
    """Exports one verified `.onnx` file per width, plus `manifest.json`.

    Each width is stripped (`keras_slim.strip`) and converted with
    `tf2onnx.convert.from_function` (input "input", dynamic batch). Right
    after writing, each file is run with onnxruntime on seeded random
    inputs and compared with the stripped Keras model: max |diff| must be
    at most `tolerance * max(1, max |keras|)` (default 1e-4). The manifest
    protocol (checks first, staging, manifest written last and atomically,
    entries for other files kept) is that of `to_tflite`.

    Args:
        model: A `keras_slim.SlimmableModel` (single input, fixed shape).
        out_dir: Output directory (created if needed).
        widths: Widths and/or dicts layer name -> channels. Defaults to the
            model's width list (S-Net) or its min and max width.
        opset: ONNX opset, 13 to 18.
        tolerance: Override the relative verification tolerance.
        fold_bn: Fold BN into the preceding layers before converting
            (onnxruntime fuses them anyway).
        input_range: `(low, high)` the training inputs were scaled to,
            recorded in the manifest and checked by `run_onnx` (see
            `to_tflite`).

    Returns:
        The manifest dict (also written to `out_dir/manifest.json`).

    Raises:
        ValueError: for an invalid width or opset.
        OSError: if `out_dir` cannot be created or written.
        keras_slim.export.ExportVerificationError: if a file does not
            reproduce Keras within tolerance.

    Example:

    >>> keras_slim.export.to_onnx(model, "export/", widths=[0.35, 1.0])
    >>> import onnxruntime as ort
    >>> session = ort.InferenceSession("export/net_w0.35.onnx")
    >>> logits = session.run(None, {"input": x})[0]

    A `keras_slim.EarlyExitModel` is exported stage by stage (plus one file
    per exit, unless `per_exit=False`), with the exit thresholds
    (`thresholds=`) recorded for `run_cascade`; the files are described in
    `keras_slim.export.staged`.
    """
    manifest = staged.export_if_early_exit(
        model, out_dir, fold_bn, early_exit_kwargs, widths=widths,
        format="onnx", opset=opset, tolerance=tolerance,
        input_range=input_range)
    if manifest is not None:
        return manifest
    mf.check_model(model)
    check_opset(opset)
    plans = mf.check_widths(model, widths)
    samples = mf.as_samples(model, None)
    spec = mf.input_signature(model)
    return mf.export_widths(
        model, out_dir, plans, samples,
        write=lambda stripped, path: export_onnx(stripped, path, opset,
                                                 [spec]),
        run=run_onnx, what="ONNX", extension=".onnx",
        input_info=mf.input_entry(samples, None, input_range),
        tolerance=tolerance, fold_bn=fold_bn,
        format="onnx", opset=int(opset), quantization="float32",
    )


@contextlib.contextmanager
def _moving_statistics(model):
    """Makes BN use its moving statistics while a graph is traced/frozen.

    `set_width` may have selected calibrated statistics of one width; a
    width-dynamic graph must not bake those in for every width.
    """
    saved = [(layer, float(layer.use_calibrated.numpy()))
             for layer in model.bn_layers]
    try:
        for layer, _ in saved:
            layer.use_calibrated.assign(0.0)
        yield
    finally:
        for layer, value in saved:
            layer.use_calibrated.assign(value)


def _full_width_depthwise(layer, inputs):
    """`SlimDepthwiseConv2D.call` at the full channel count.

    An ONNX Conv's `group` (= channels of a depthwise conv) is a static
    attribute, so tf2onnx cannot convert a depthwise convolution whose
    channel count is only known at run time. Depthwise filters are
    per-channel: scattering the active channels into a zero tensor of the
    full width, convolving all of them and gathering the active outputs
    gives the same values with a static channel count.
    """
    import tensorflow as tf

    from keras_slim.layers import scope as aw

    full = layer.kernel.shape[-2]
    multiplier = layer.depth_multiplier
    count = tf.shape(inputs)[-1]
    if layer.input_layout is not None:
        indices = tf.cast(aw.input_channel_indices(layer.input_layout, full),
                          tf.int32)
    else:
        indices = tf.range(count)
    padded = aw.to_full_width(inputs, indices, full)
    outputs = tf.nn.depthwise_conv2d(
        padded,
        layer.kernel,
        strides=(1,) + tuple(layer.strides) + (1,),
        padding=layer.padding.upper(),
        dilations=layer.dilation_rate,
    )
    if layer.use_bias:
        outputs = outputs + layer.bias
    active = tf.reshape(
        indices[:, None] * multiplier + tf.range(multiplier)[None, :], [-1]
    )
    outputs = tf.gather(outputs, active, axis=-1)
    if layer.activation is not None:
        outputs = layer.activation(outputs)
    return outputs


@contextlib.contextmanager
def _onnx_compatible(model):
    """Traces depthwise convolutions with a static channel count."""
    from keras_slim.layers.convolution import SlimDepthwiseConv2D

    layers = [
        layer for layer in graph.all_layers(model.network)
        if isinstance(layer, SlimDepthwiseConv2D)
    ]
    try:
        for layer in layers:
            layer.call = functools.partial(_full_width_depthwise, layer)
        yield
    finally:
        for layer in layers:
            with contextlib.suppress(AttributeError):
                del layer.call


def dynamic_function(model):
    """A `tf.function(images, width)` running `model` at a runtime width.

    The width is clipped to `model.width_range`; for an S-Net it is snapped
    to the nearest listed width, whose private BN row is selected in-graph.
    Channel counts are computed in-graph with the same rule as
    `model.channels_for`.
    """
    import tensorflow as tf

    from keras_slim.layers import scope as aw

    low, high = model.width_range

    def run(images, width):
        width = tf.clip_by_value(tf.cast(width, tf.float32), low, high)
        index = None
        if model.switchable:
            # Created inside the trace: a captured eager constant would
            # become an extra graph input in tf2onnx.
            listed = tf.constant(model.widths, tf.float32)
            index = tf.cast(tf.argmin(tf.abs(listed - width)), tf.int32)
            width = tf.gather(listed, index)
        state = model._state(width, width_index=index)
        with aw.active_width(state):
            return model.network(images, training=False)

    return run


def to_onnx_dynamic(model, path, opset=17, check_widths=None, tolerance=None):
    """Exports ONE ONNX graph that takes the width as a runtime input.

    The graph has two inputs: "input" (images, dynamic batch) and "width"
    (a float32 scalar: feed `np.array(0.5, np.float32)`). Channel counts are
    computed in the graph from the width (same rounding as
    `model.channels_for`), kernels are sliced at run time. The width is
    clipped to `model.width_range`; an S-Net (switchable BN) snaps it to
    the nearest listed width and selects that width's private BN row.

    Which models it is exact for: BN uses the MOVING statistics stored in
    the model (calibrated statistics of individual widths are not in the
    graph). That is exact at every width for triangular Any-Width Networks
    (`model.exact_without_calibration`), exact at each listed width of an
    S-Net that was not recalibrated, and exact at the max width of a US-Net;
    at other widths of a US-Net the full-width statistics are used, which is
    approximate. For calibrated US-Nets export the widths you need with
    `to_onnx` instead.

    Depthwise convolutions run at the full channel count in this graph
    (inactive channels are zeros, active outputs are gathered): an ONNX
    Conv's `group` is a static attribute, so a depthwise convolution with a
    run-time channel count cannot be expressed otherwise. The results are
    identical; the cost is that of the full-width depthwise layers (a few
    percent of a MobileNet's MACs).

    The file is verified against the same computation in TensorFlow at
    `check_widths` (default: min, middle and max width) before it is moved
    to `path`; the returned dict also reports, per width, the difference to
    `strip(model, width)` (what `set_width` computes), which is ~0 exactly
    for the models listed above.

    Args:
        model: A `keras_slim.SlimmableModel`.
        path: Output `.onnx` path.
        opset: ONNX opset, 13 to 18.
        check_widths: Widths to verify at.
        tolerance: Relative verification tolerance (default 1e-4).

    Returns:
        A dict: "path", "size_bytes", "exact" (whether the model is of a
        kind the graph is exact for) and "checks" (per width: max_abs_diff
        to TensorFlow, diff_to_strip).

    Raises:
        ValueError: for an invalid opset or check width.
        keras_slim.export.ExportVerificationError: if ONNX Runtime does not
            reproduce TensorFlow within tolerance.

    Example:

    >>> keras_slim.export.to_onnx_dynamic(model, "net_any_width.onnx")
    >>> session = onnxruntime.InferenceSession("net_any_width.onnx")
    >>> session.run(None, {"input": x, "width": np.array(0.6, np.float32)})
    """
    import tensorflow as tf

    mf.check_model(model)
    if staged.is_early_exit(model):
        raise ValueError(
            "to_onnx_dynamic() writes a single-output graph; export an "
            "early-exit model stage by stage with to_onnx()."
        )
    check_opset(opset)
    low, high = model.width_range
    if check_widths is None:
        check_widths = model.widths or [low, round((low + high) / 2, 4), high]
    plans = mf.check_widths(model, check_widths)
    if any(isinstance(width, dict) for width, _ in plans):
        raise ValueError(
            "The width-dynamic graph takes a width multiplier, not a "
            "per-layer configuration; pass numbers in `check_widths`."
        )
    samples = mf.as_samples(model, None)
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"'{path}' is a directory; pass a file path.")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    run = dynamic_function(model)
    signature = [
        mf.input_signature(model, "input"),
        tf.TensorSpec([], tf.float32, name="width"),
    ]
    with files.atomic_path(path) as temp:
        with _moving_statistics(model):
            with _onnx_compatible(model):
                function_to_onnx(tf.function(run, input_signature=signature),
                         signature, opset, temp)
            # The reference runs the layers as they are, not as traced for
            # ONNX.
            function = tf.function(run, input_signature=signature)
            checks = {}
            for width, tag in plans:
                w = np.array(width, np.float32)
                reference = function(samples, w).numpy()
                result = mf.compare(
                    reference, run_onnx(temp, samples, w), None, tolerance
                )
                mf.verify(result, f"The width-dynamic ONNX graph at {width}")
                stripped = strip(model, width)
                # strip() takes calibrated statistics where they exist.
                result["diff_to_strip"] = float(np.abs(
                    mf.keras_reference(stripped, samples) - reference).max())
                checks[tag] = result
    return {
        "path": path,
        "format": "onnx",
        "opset": int(opset),
        "size_bytes": os.path.getsize(path),
        "exact": bool(
            model.exact_without_calibration
            or (model.switchable and not model.calibrations)
        ),
        "checks": checks,
    }
