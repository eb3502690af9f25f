"""Cost of a width: multiply-accumulates, parameters and measured latency.

Counting convention (that of the MobileNet / Slimmable Networks papers'
"FLOPs", which are multiply-adds):

- convolution: `k_h * k_w * C_in / groups * C_out * H_out * W_out` MACs;
- depthwise convolution: `k_h * k_w * C * multiplier * H_out * W_out`;
- dense: `in * out` per output position (times the positions of a >2D input);
- batch normalization, bias additions, activations, pooling and `Add` cost
  no MACs; their parameters (BN gamma, beta and moving statistics, biases)
  do count as parameters.

A slimmable model is counted through `keras_slim.strip`, so the numbers are
those of exactly the network an export of that width contains.
"""

import os
import time

import keras
import numpy as np

from keras_slim.model import SlimmableModel


def _as_functional(model, input_shape):
    """A functional view of `model`, optionally on a new input shape.

    The layers are shared, not copied: calling them on a fresh input adds
    graph nodes whose shapes follow that input.
    """
    if input_shape is None and not isinstance(model, keras.Sequential):
        return model
    if not model.inputs:
        raise ValueError(
            f"Model '{model.name}' has no known input; build it on a "
            "keras.Input or pass `input_shape`."
        )
    if len(model.inputs) != 1:
        raise ValueError(
            "profile() supports single-input models; "
            f"'{model.name}' has {len(model.inputs)} inputs."
        )
    if input_shape is None:
        inputs = keras.Input(batch_shape=model.inputs[0].shape)
    else:
        inputs = keras.Input(shape=tuple(input_shape))
    if isinstance(model, keras.Sequential):
        outputs = inputs
        for layer in model.layers:
            outputs = layer(outputs)
    else:
        outputs = keras.models.clone_model(
            model,
            input_tensors=keras.tree.pack_sequence_as(model.input, [inputs]),
            clone_function=lambda layer: layer,
        ).outputs
    return keras.Model(inputs, outputs, name=model.name)


def _layer_macs(layer, in_shape, out_shape):
    """MACs of one call of `layer` (0 for layers without a kernel)."""

    def positions(shape):
        dims = shape[1:-1]
        if any(d is None for d in dims):
            raise ValueError(
                f"Layer '{layer.name}' has an unknown spatial size "
                f"(output shape {tuple(out_shape)}); pass "
                "profile(..., input_shape=(H, W, C))."
            )
        return int(np.prod(dims)) if dims else 1

    if isinstance(layer, keras.layers.SeparableConv2D):
        depthwise = int(np.prod(layer.depthwise_kernel.shape))
        pointwise = int(np.prod(layer.pointwise_kernel.shape))
        return (depthwise + pointwise) * positions(out_shape)
    if isinstance(layer, keras.layers.Conv2DTranspose):
        # Every input position scatters one full kernel.
        return int(np.prod(layer.kernel.shape)) * positions(in_shape)
    if isinstance(
        layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
                keras.layers.DepthwiseConv2D, keras.layers.DepthwiseConv1D)
    ):
        # kernel = (*k, C_in / groups, C_out), or (*k, C, multiplier).
        return int(np.prod(layer.kernel.shape)) * positions(out_shape)
    if isinstance(layer, keras.layers.Dense):
        return int(np.prod(layer.kernel.shape)) * positions(out_shape)
    return 0


def _nodes_in_order(model):
    depths = sorted(model._nodes_by_depth, reverse=True)
    return [n for d in depths for n in model._nodes_by_depth[d]]


def _profile_graph(model, prefix, rows, counted):
    for node in _nodes_in_order(model):
        layer = node.operation
        if layer is None or isinstance(layer, keras.layers.InputLayer):
            continue
        name = prefix + layer.name
        if isinstance(layer, keras.Model):
            inner = _as_functional(layer, node.input_tensors[0].shape[1:])
            _profile_graph(inner, name + "/", rows, counted)
            continue
        in_shape = node.input_tensors[0].shape if node.input_tensors else None
        out_shape = node.outputs[0].shape
        # A layer called several times has its MACs counted per call and its
        # parameters once.
        params = 0 if id(layer) in counted else layer.count_params()
        counted.add(id(layer))
        rows.append({
            "name": name,
            "type": type(layer).__name__,
            "output_shape": [None if d is None else int(d) for d in out_shape],
            "channels": None if out_shape[-1] is None else int(out_shape[-1]),
            "macs": _layer_macs(layer, in_shape, out_shape),
            "params": int(params),
        })


def profile(model, width=None, input_shape=None):
    """Multiply-accumulates and parameters of a width, total and per layer.

    See the module docstring for the counting convention (conv/dense MACs
    only; BN and bias parameters are parameters; activations, BN, pooling
    and additions are free).

    Args:
        model: A `keras_slim.SlimmableModel`, or any built functional or
            Sequential Keras model.
        width: For a `SlimmableModel`, a width or a dict layer name ->
            channels (default: the width of the last `set_width`). Must be
            None for a plain Keras model.
        input_shape: Input shape without the batch dimension, e.g.
            `(224, 224, 3)`, to count at another resolution or when the
            model's spatial size is unknown.

    Returns:
        A dict with "macs", "params" (every weight the exported network
        stores, BN moving statistics included), "trainable_params",
        "input_shape", "width" (None for a plain model), "channels"
        (layer name -> output channels of each conv/dense layer) and
        "layers" (a list of per-layer dicts: name, type, output_shape,
        channels, macs, params).

    Raises:
        ValueError: for a width outside the model's range, a width given
            for a plain model, or an unknown spatial size.

    Example:

    >>> keras_slim.profile(model, 0.5)["macs"]
    1234567
    >>> [keras_slim.profile(model, w)["macs"] for w in (0.25, 1.0)]
    """
    if isinstance(model, SlimmableModel):
        from keras_slim.strip import strip

        width = model.width if width is None else width
        network = strip(model, width)
    else:
        if not isinstance(model, keras.Model):
            raise ValueError(
                "profile() takes a keras_slim.SlimmableModel or a Keras "
                f"model; got {type(model).__name__}."
            )
        if width is not None:
            raise ValueError(
                "`width` applies to a keras_slim.SlimmableModel only; "
                f"got width={width!r} for a plain Keras model."
            )
        network = model
    if not network.built:
        raise ValueError(
            f"Model '{network.name}' is not built; build it or give it an "
            "keras.Input."
        )
    network = _as_functional(network, input_shape)
    rows = []
    _profile_graph(network, "", rows, set())
    trainable = sum(int(np.prod(w.shape)) for w in network.trainable_weights)
    return {
        "width": width,
        "input_shape": [
            None if d is None else int(d) for d in network.inputs[0].shape[1:]
        ],
        "macs": int(sum(r["macs"] for r in rows)),
        "params": int(sum(r["params"] for r in rows)),
        "trainable_params": int(trainable),
        "channels": {r["name"]: r["channels"] for r in rows if r["macs"]},
        "layers": rows,
    }


def _interpreter(model, width, num_threads, signature_key):
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(model, (str, os.PathLike)):
        if not os.path.isfile(model):
            raise ValueError(f"No TFLite file at '{os.fspath(model)}'.")
        return Interpreter(model_path=os.fspath(model), num_threads=num_threads)
    if isinstance(model, (bytes, bytearray)):
        return Interpreter(model_content=bytes(model), num_threads=num_threads)
    if isinstance(model, keras.Model):
        from keras_slim.export.tflite import convert_keras_model
        from keras_slim.strip import strip

        if isinstance(model, SlimmableModel):
            model = strip(model, model.width if width is None else width)
        elif width is not None:
            raise ValueError(
                "`width` applies to a keras_slim.SlimmableModel only; got "
                f"width={width!r} for a plain Keras model."
            )
        content = convert_keras_model(model)
        return Interpreter(model_content=content, num_threads=num_threads)
    raise ValueError(
        "profile_latency() takes a .tflite path, TFLite flatbuffer bytes, a "
        f"SlimmableModel or a Keras model; got {type(model).__name__}."
    )


def _random_input(detail, rng):
    shape = [1 if d < 0 else int(d) for d in detail.get(
        "shape_signature", detail["shape"])]
    dtype = np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype,
                            endpoint=True)
    return rng.standard_normal(shape).astype(dtype)


def profile_latency(
    model,
    width=None,
    num_runs=50,
    warmup=5,
    num_threads=1,
    signature_key=None,
    seed=0,
):
    """Measures inference latency with the LiteRT interpreter.

    Runs `warmup` untimed invocations, then `num_runs` timed ones on a
    fixed random input (batch 1), and reports the distribution: on a busy
    or throttled machine single runs vary, so compare medians and look at
    the spread.

    Args:
        model: A path to a `.tflite` file, TFLite flatbuffer bytes, a
            `SlimmableModel` (stripped at `width` and converted to float32
            TFLite) or a plain Keras model (converted).
        width: Width for a `SlimmableModel` (default: its current width).
        num_runs: Timed invocations (>= 1).
        warmup: Untimed invocations first (allocations, caches).
        num_threads: Interpreter threads.
        signature_key: For a multi-signature file, the signature to time
            (default: the first).
        seed: Seed of the random input.

    Returns:
        A dict with "median_ms", "p10_ms", "p90_ms", "mean_ms", "min_ms",
        "max_ms", "num_runs", "num_threads" and "runs_ms" (all timings).

    Example:

    >>> keras_slim.profile_latency("out/model_w0.5.tflite")["median_ms"]
    0.42
    >>> keras_slim.profile_latency(model, width=0.5, num_threads=2)
    """
    if int(num_runs) < 1 or int(warmup) < 0 or int(num_threads) < 1:
        raise ValueError(
            "num_runs and num_threads must be >= 1 and warmup >= 0; got "
            f"num_runs={num_runs}, warmup={warmup}, num_threads={num_threads}."
        )
    interpreter = _interpreter(model, width, int(num_threads), signature_key)
    rng = np.random.default_rng(seed)
    signatures = interpreter.get_signature_list()
    if signature_key is not None and signature_key not in signatures:
        raise ValueError(
            f"No signature '{signature_key}'; the file has "
            f"{sorted(signatures)}."
        )
    if signature_key is not None or len(signatures) > 1:
        key = signature_key or next(iter(signatures))
        runner = interpreter.get_signature_runner(key)
        feeds = {
            name: _random_input(detail, rng)
            for name, detail in runner.get_input_details().items()
        }

        def invoke():
            runner(**feeds)

    else:
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.resize_tensor_input(
                detail["index"], [1 if d < 0 else d for d in detail.get(
                    "shape_signature", detail["shape"])]
            )
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], _random_input(detail, rng))
        invoke = interpreter.invoke
    for _ in range(int(warmup)):
        invoke()
    runs = []
    for _ in range(int(num_runs)):
        start = time.perf_counter()
        invoke()
        runs.append((time.perf_counter() - start) * 1e3)
    runs_array = np.asarray(runs)
    return {
        "median_ms": float(np.median(runs_array)),
        "p10_ms": float(np.percentile(runs_array, 10)),
        "p90_ms": float(np.percentile(runs_array, 90)),
        "mean_ms": float(runs_array.mean()),
        "min_ms": float(runs_array.min()),
        "max_ms": float(runs_array.max()),
        "num_runs": int(num_runs),
        "num_threads": int(num_threads),
        "runs_ms": runs,
    }
