"""Measured inference latency of a TFLite model, with the LiteRT interpreter."""

import os
import time

import keras
import numpy as np

from keras_slim.export import runtimes
from keras_slim.export.converters import convert_keras_model
from keras_slim.model import SlimmableModel
from keras_slim.stripping import strip


def _interpreter(model, width, num_threads, signature_key):
    if isinstance(model, (str, os.PathLike, bytes, bytearray)):
        return runtimes.litert_interpreter(model, num_threads)
    if isinstance(model, keras.Model):
        if isinstance(model, SlimmableModel):
            model = strip(model, model.width if width is None else width)
        elif width is not None:
            raise ValueError(
                "`width` applies to a keras_slim.SlimmableModel only; got "
                f"width={width!r} for a plain Keras model."
            )
        return runtimes.litert_interpreter(convert_keras_model(model),
                                           num_threads)
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
