"""Early-exit export the way an app runs it: stage by stage, exit by exit.

For each width, an early-exit network with `K` exits becomes `K` STAGE
files. Stage 1 takes the images ("images") and returns exit 1's ensemble
logits ("logits", `P_1`), their confidence ("confidence", the max softmax
probability) and the features at the first cut ("next_features"); stage
`k` takes what stage `k - 1` handed on ("features", and "previous_logits" =
`P_{k-1}` when `t_k > 0`) and returns `P_k`, its confidence and, unless it
is the last, the features for stage `k + 1`. An app runs stage 1, stops if
"confidence" reaches the exit's threshold, else feeds the next stage:
nothing is computed twice. Besides, one EXIT file per exit (images -> `P_k`) serves
apps that choose a depth once.

Every file is verified against Keras right after it is written (each stage
on the inputs the Keras stages before it produce), and the manifest holds,
per width, the stage and exit files, per-stage and cumulative MACs, the
ensemble weights and, if given, the exit thresholds. The usual protocol
applies (arguments checked first, staging directory, manifest written last
and atomically). `run_cascade` runs the stages with LiteRT (or ONNX
Runtime), stopping per image, and gives the labels
`EarlyExitModel.predict_dynamic` gives.
"""

import os
import time

import keras
import numpy as np

from keras_slim.early_exit import budget as budget_lib
from keras_slim.graph import replay_calls
from keras_slim.early_exit.graph import ExitStructure
from keras_slim.early_exit.graph import new_input_like
from keras_slim.export import manifest as mf
from keras_slim.export import runtimes
from keras_slim.export.converters import check_opset
from keras_slim.export.converters import convert_keras_model
from keras_slim.export.converters import export_onnx
from keras_slim.layers.exit_head import EnsembleLogits
from keras_slim.layers.exit_head import ExitConfidence
from keras_slim.stripping import strip
from keras_slim.width import width_suffix

FORMATS = ("tflite", "onnx")
_QUANTIZATIONS = (None, "float16", "dynamic")


def is_early_exit(model):
    """Whether `model` is a `keras_slim.EarlyExitModel`."""
    from keras_slim.early_exit.model import EarlyExitModel

    return isinstance(model, EarlyExitModel)


def export_if_early_exit(model, out_dir, fold_bn, early_exit_kwargs,
                         **kwargs):
    """`export_staged(model, out_dir, **kwargs, **early_exit_kwargs)` for
    an early-exit model; None for another model (refusing early-exit
    arguments there), which `to_tflite` / `to_onnx` export per width.

    Example:

    >>> manifest = export_if_early_exit(model, "out/", False, {},
    ...                                 format="onnx")
    """
    if is_early_exit(model):
        if fold_bn:
            raise ValueError("fold_bn is not supported for staged export.")
        return export_staged(model, out_dir, **kwargs, **early_exit_kwargs)
    if early_exit_kwargs:
        raise TypeError(
            f"Unexpected arguments {sorted(early_exit_kwargs)} (they apply "
            "to early-exit models only)."
        )
    return None


def check_early_exit_model(model):
    """Raises unless `model` is an `EarlyExitModel` an exporter can take."""
    from keras_slim.early_exit.model import EarlyExitModel

    mf.check_model(model)
    if not isinstance(model, EarlyExitModel):
        raise ValueError(
            "Staged export needs a keras_slim.EarlyExitModel; got "
            f"{type(model).__name__}."
        )


def stage_models(model, width):
    """Plain Keras models of each stage and each exit at one width.

    Args:
        model: A `keras_slim.EarlyExitModel`.
        width: A width of the model.

    Returns:
        `(stages, exits)`: lists of `K` functional Keras models of stock
        layers (the network stripped at `width`). Stage models take
        "images" or "features" (+ "previous_logits") and return a dict
        with "logits", "confidence" (and "next_features"); exit models map
        images to `P_k`.

    Example:

    >>> stages, exits = stage_models(model, 1.0)
    >>> out = stages[0](images)  # {"logits", "confidence", "next_features"}
    """
    stripped = strip(model, width)
    structure = ExitStructure(stripped, model.after)
    weights = model.ensemble_weights
    num_exits = structure.num_exits
    image_input = structure.input
    tag = width_suffix(width)
    base = f"{model.network.name}_{tag}"

    def segment(k, source, tensor_map):
        replay_calls(structure.stage_calls[k], tensor_map)
        raw = tensor_map[id(structure.outputs[k])]
        features = (
            tensor_map[id(structure.cuts[k])] if k < num_exits - 1 else None
        )
        return raw, features

    stages = []
    for k in range(num_exits):
        if k == 0:
            source = image_input
            entry = new_input_like(image_input, "images")
        else:
            source = structure.cuts[k - 1]
            entry = new_input_like(source, "features")
        raw, features = segment(k, source, {id(source): entry})
        inputs, logits = [entry], raw
        if k > 0 and weights[k] != 0:
            previous = keras.Input((model.num_classes,),
                                   name="previous_logits")
            inputs.append(previous)
            logits = EnsembleLogits(
                weights[k], name=f"exit{k + 1}_ensemble"
            )([raw, previous])
        outputs = {
            "logits": logits,
            "confidence": ExitConfidence(
                name=f"exit{k + 1}_confidence")(logits),
        }
        if features is not None:
            outputs["next_features"] = features
        stages.append(keras.Model(
            inputs[0] if len(inputs) == 1 else inputs, outputs,
            name=f"{base}_stage{k + 1}",
        ))

    exits = []
    for k in range(num_exits):
        entry = new_input_like(image_input, "images")
        tensor_map = {id(image_input): entry}
        ensemble = None
        for j in range(k + 1):
            replay_calls(structure.stage_calls[j], tensor_map)
            raw = tensor_map[id(structure.outputs[j])]
            if ensemble is None or weights[j] == 0:
                ensemble = raw
            else:
                ensemble = EnsembleLogits(
                    weights[j], name=f"exit{j + 1}_ensemble"
                )([raw, ensemble])
        exits.append(keras.Model(entry, ensemble, name=f"{base}_exit{k + 1}"))
    return stages, exits


def _feeds(stage, images, previous):
    """Inputs of a Keras stage model, by name."""
    feeds = {}
    for tensor in stage.inputs:
        # A stage's inputs are `keras.Input(name=...)`, whose tensors carry
        # the name.
        name = tensor.name
        feeds[name] = previous["next_features"] if name == "features" else (
            images if name == "images" else previous["logits"]
        )
    return feeds


def _keras_stage_outputs(stage, feeds):
    order = [t.name for t in stage.inputs]
    values = [feeds[name] for name in order]
    outputs = stage(values[0] if len(values) == 1 else values,
                    training=False)
    return {k: np.asarray(keras.ops.convert_to_numpy(v))
            for k, v in outputs.items()}


class _Runner:
    """Runs one exported stage/exit file by input and output names.

    For TFLite it uses the interpreter's own API, with tensors allocated
    once per input shape and read and written through buffer views: a
    signature runner re-allocates on every call, which per stage costs as
    much as a small stage itself.
    """

    def __init__(self, path, fmt, num_threads=1):
        self.format = fmt
        if fmt == "tflite":
            self.interpreter = runtimes.litert_interpreter(path, num_threads)
            runner = self.interpreter.get_signature_runner()
            self.inputs = {
                name: detail["index"]
                for name, detail in runner.get_input_details().items()
            }
            self.outputs = {
                name: detail["index"]
                for name, detail in runner.get_output_details().items()
            }
            self.input_shapes = {
                name: tuple(int(d) for d in detail["shape_signature"])
                for name, detail in runner.get_input_details().items()
            }
            self.input_names = list(self.inputs)
            self.output_names = list(self.outputs)
            self.shapes = None
            self.views = {}
        else:
            self.session = runtimes.onnx_session(path, num_threads)
            self.input_names = [i.name for i in self.session.get_inputs()]
            self.output_names = [o.name for o in self.session.get_outputs()]

    def prepare(self, shapes):
        """TFLite: sizes the inputs (dict name -> shape) once."""
        if shapes == self.shapes:
            return
        for name, shape in shapes.items():
            self.interpreter.resize_tensor_input(self.inputs[name], shape)
        self.interpreter.allocate_tensors()
        self.shapes = shapes
        self.views = {
            name: self.interpreter.tensor(index)
            for name, index in {**self.inputs, **self.outputs}.items()
        }

    def view(self, name):
        """TFLite: a numpy view of a tensor buffer (drop it before the
        next invoke)."""
        return self.views[name]()

    def invoke(self):
        self.interpreter.invoke()

    def __call__(self, **feeds):
        feeds = {k: np.asarray(v, "float32") for k, v in feeds.items()}
        if self.format != "tflite":
            values = self.session.run(None, feeds)
            return dict(zip(self.output_names, values))
        self.prepare({name: value.shape for name, value in feeds.items()})
        for name, value in feeds.items():
            self.view(name)[...] = value
        self.invoke()
        return {name: self.view(name).copy() for name in self.output_names}


def _cascade_tflite(runners, images, values):
    """Per-image cascade through TFLite stages with buffer views."""
    num_exits = len(runners)
    for runner in runners:
        runner.prepare({
            name: (1,) + shape[1:]
            for name, shape in runner.input_shapes.items()
        })
    count = len(images)
    labels = np.zeros(count, "int64")
    exits = np.zeros(count, "int64")
    confidences = np.zeros(count, "float64")
    latency = np.zeros(count, "float64")
    clock = time.perf_counter
    for i in range(count):
        start = clock()
        runners[0].view("images")[...] = images[i:i + 1]
        for k, runner in enumerate(runners):
            if k:
                previous = runners[k - 1]
                np.copyto(runner.view("features"),
                          previous.view("next_features"))
                if "previous_logits" in runner.views:
                    np.copyto(runner.view("previous_logits"),
                              previous.view("logits"))
            runner.invoke()
            confidence = runner.view("confidence")[0]
            if k == num_exits - 1 or confidence >= values[k]:
                label = runner.view("logits")[0].argmax()
                break
        latency[i] = (clock() - start) * 1e3
        labels[i], exits[i], confidences[i] = label, k + 1, confidence
    return labels, exits, confidences, latency


def _cascade_generic(runners, images, values):
    """Per-image cascade through runners called with named feeds."""
    num_exits = len(runners)
    count = len(images)
    labels = np.zeros(count, "int64")
    exits = np.zeros(count, "int64")
    confidences = np.zeros(count, "float64")
    latency = np.zeros(count, "float64")
    for i in range(count):
        start = time.perf_counter()
        outputs = {}
        for k, runner in enumerate(runners):
            feeds = {}
            for name in runner.input_names:
                if name == "images":
                    feeds[name] = images[i:i + 1]
                elif name == "features":
                    feeds[name] = outputs["next_features"]
                else:
                    feeds[name] = outputs["logits"]
            outputs = runner(**feeds)
            confidence = outputs["confidence"][0]
            if k == num_exits - 1 or confidence >= values[k]:
                label = outputs["logits"][0].argmax()
                break
        latency[i] = (time.perf_counter() - start) * 1e3
        labels[i], exits[i], confidences[i] = label, k + 1, confidence
    return labels, exits, confidences, latency


def _convert(keras_model, path, fmt, quantize, opset):
    if fmt == "tflite":
        with open(path, "wb") as f:
            f.write(convert_keras_model(keras_model, quantize))
    else:
        export_onnx(keras_model, path, opset)


def _compare_all(reference, actual, quantize, tolerance):
    """One fidelity record over several named outputs (the worst one)."""
    worst = None
    for name, expected in reference.items():
        result = mf.compare(expected, actual[name], quantize, tolerance)
        result["output"] = name
        ratio = result["max_abs_diff"] / max(result["tolerance"], 1e-30)
        if worst is None or ratio > worst[0]:
            worst = (ratio, result)
    result = dict(worst[1])
    logits = mf.compare(reference["logits"], actual["logits"], quantize,
                        tolerance)
    result["argmax_agreement"] = logits["argmax_agreement"]
    return result


def _thresholds_by_width(thresholds, plans, num_exits):
    """dict width tag -> (values, policy dict or None)."""
    if thresholds is None:
        return {}
    if isinstance(thresholds, dict):
        items = thresholds.items()
    elif isinstance(thresholds, budget_lib.ExitPolicy):
        items = [(thresholds.width, thresholds)]
    elif isinstance(thresholds, (list, tuple)) and thresholds and all(
        isinstance(t, budget_lib.ExitPolicy) for t in thresholds
    ):
        items = [(t.width, t) for t in thresholds]
    else:
        if len(plans) != 1:
            raise ValueError(
                "A plain thresholds list applies to one width; pass a dict "
                "width -> thresholds (or ExitPolicy objects) for several."
            )
        items = [(plans[0][0], thresholds)]
    tags = {tag for _, tag in plans}
    chosen = {}
    for width, value in items:
        tag = width_suffix(width)
        if tag not in tags:
            raise ValueError(
                f"thresholds are given for width {width!r}, which is not "
                f"exported (widths: {[w for w, _ in plans]})."
            )
        values, _ = budget_lib.check_thresholds(value, num_exits)
        policy = value.to_dict() if isinstance(
            value, budget_lib.ExitPolicy) else None
        chosen[tag] = (values, policy)
    return chosen


def export_staged(
    model,
    out_dir,
    widths=None,
    format="tflite",
    thresholds=None,
    per_exit=True,
    quantize=None,
    representative_data=None,
    opset=17,
    tolerance=None,
    input_range=None,
):
    """Writes verified stage files (and exit files) per width + manifest.

    See the module docstring for what each file takes and returns.

    Args:
        model: A `keras_slim.EarlyExitModel`.
        out_dir: Output directory (created if needed). Entries of an
            existing manifest for other files are kept, so TFLite and ONNX
            exports can share a directory.
        widths: Widths to export (default: as `keras_slim.export.to_tflite`).
        format: "tflite" or "onnx".
        thresholds: Optional exit thresholds recorded in the manifest (and
            used by `run_cascade`): an `ExitPolicy`, a list of them, a dict
            width -> policy or list, or (one width) a list of `K - 1`
            numbers.
        per_exit: Also write one images -> `P_k` file per exit.
        quantize: TFLite only: None, "float16" or "dynamic".
        representative_data: Verification images (default: seeded random).
        opset: ONNX opset (13 to 18).
        tolerance: Relative verification tolerance (see `to_tflite`).
        input_range: The training inputs' range, recorded in the manifest
            and checked by `run_cascade` (see `to_tflite`).

    Returns:
        The manifest dict. `manifest["early_exit"]["widths"][tag]` lists the
        files, "stage_macs", "cumulative_macs" and "thresholds" per width.

    Raises:
        ValueError: for a model without exits, an unknown format or
            quantization, thresholds of the wrong length, or bad widths.
        keras_slim.export.ExportVerificationError: if a file does not
            reproduce Keras within tolerance.

    Example:

    >>> policy = keras_slim.calibrate_exit_thresholds(model, val, budget=2e7)
    >>> keras_slim.export.to_tflite(model, "out/", thresholds=policy)
    >>> keras_slim.export.run_cascade("out/", x_test[:100]).labels
    """
    check_early_exit_model(model)
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}; got {format!r}.")
    if format == "onnx":
        check_opset(opset)
        if quantize is not None:
            raise ValueError("ONNX stages are exported in float32 only.")
    elif quantize not in _QUANTIZATIONS:
        raise ValueError(
            f"Staged TFLite export supports quantize in {_QUANTIZATIONS}; "
            f"got {quantize!r} (int8 stages would need representative "
            "features for every stage input)."
        )
    plans = mf.check_widths(model, widths)
    chosen = _thresholds_by_width(thresholds, plans, model.num_exits)
    samples = mf.as_samples(model, representative_data)[: mf.MAX_SAMPLES]
    input_info = mf.input_entry(samples, representative_data, input_range)
    suffix = "" if quantize is None else f"_{quantize}"
    previous = mf.read_manifest(out_dir, missing_ok=True) or {}
    summary = dict((previous.get("early_exit") or {}).get("widths", {}))
    entries = []
    with mf.staging(out_dir) as stage_dir:
        for width, tag in plans:
            costs = model.exit_costs(width)
            stages, exit_models = stage_models(model, width)
            files = {"stages": [], "exits": []}
            carried = {}
            for k, stage in enumerate(stages):
                name = f"{stage.name}{suffix}.{format}"
                path = stage_dir.file(name)
                _convert(stage, path, format, quantize, opset)
                feeds = _feeds(stage, samples, carried)
                reference = _keras_stage_outputs(stage, feeds)
                actual = _Runner(path, format)(**feeds)
                result = _compare_all(reference, actual, quantize, tolerance)
                mf.verify(result, f"Stage {k + 1} at width {width!r}")
                carried = reference  # the next stage reads Keras' outputs
                entries.append(_entry(
                    path, stage, width, format, quantize, result,
                    kind="stage", exit=k + 1,
                    macs=costs["stage_macs"][k],
                    cumulative_macs=costs["macs"][k],
                    inputs=list(feeds), outputs=sorted(reference),
                ))
                files["stages"].append(name)
            for k, exit_model in enumerate(exit_models if per_exit else []):
                name = f"{exit_model.name}{suffix}.{format}"
                path = stage_dir.file(name)
                _convert(exit_model, path, format, quantize, opset)
                reference = np.asarray(keras.ops.convert_to_numpy(
                    exit_model(samples, training=False)))
                actual = _Runner(path, format)(images=samples)
                (output,) = actual.values()
                result = mf.compare(reference, output, quantize, tolerance)
                mf.verify(result, f"Exit file {k + 1} at width {width!r}")
                entries.append(_entry(
                    path, exit_model, width, format, quantize, result,
                    kind="exit", exit=k + 1, macs=costs["macs"][k],
                    cumulative_macs=costs["macs"][k], inputs=["images"],
                    outputs=["logits"],
                ))
                files["exits"].append(name)
            record = dict(summary.get(tag, {}))
            record.update(
                config=None, **mf.width_fields(width),
                stage_macs=costs["stage_macs"],
                cumulative_macs=costs["macs"],
            )
            record.setdefault("files", {})
            record["files"] = {**record["files"], f"{format}{suffix}": files}
            if tag in chosen:
                record["thresholds"], record["policy"] = chosen[tag]
            summary[tag] = record
        extra = {
            "early_exit": {
                "num_exits": model.num_exits,
                "after": list(model.after),
                "ensemble_weights": list(model.ensemble_weights),
                "num_classes": model.num_classes,
                "never_exit_threshold": budget_lib.NEVER_EXIT,
                "widths": summary,
            }
        }
        return stage_dir.commit(entries, model, extra=extra,
                                input_info=input_info)


def _entry(path, keras_model, width, fmt, quantize, result, **fields):
    from keras_slim.profiling import profile

    entry = {
        "file": os.path.basename(path),
        "format": fmt,
        "quantization": quantize or "float32",
        **fields,
    }
    entry.update(mf.width_fields(width))
    entry["params"] = profile(keras_model)["params"]
    entry.update(size_bytes=os.path.getsize(path), sha256=mf.sha256(path),
                 **result)
    return entry


class CascadeResult(dict):
    """What `run_cascade` returns (a dict with attribute access).

    Keys: "labels", "exits" (1-based), "macs" (per image), "latency_ms"
    (per image, wall clock of the stages it ran and the confidence checks),
    "confidences", "width", "thresholds", "mean_macs", "mean_latency_ms".
    """

    __getattr__ = dict.__getitem__


def run_cascade(out_dir, images, thresholds=None, width=None,
                format="tflite", num_threads=1, quantization=None):
    """Runs exported stages image by image, stopping at the first confident
    exit, and measures each image's latency.

    Image i runs stage 1; if its "confidence" output (max softmax of
    "logits", computed in the file) is `>= thresholds[0]` it stops there,
    else stage 2 gets stage 1's "next_features" (and "logits" as
    "previous_logits"), and so on; the last stage always answers. The rule
    and the confidence are those of `EarlyExitModel.predict_dynamic`, so
    the labels are the same, up to float round-off for a sample whose
    confidence lies within ~1e-6 of a threshold (e.g. the validation
    sample that defines a threshold, which sits exactly on it).

    Args:
        out_dir: A directory written by the staged exporters.
        images: A float32 array `[N, H, W, C]`.
        thresholds: An `ExitPolicy` or `K - 1` numbers; default: those in
            the manifest for this width.
        width: The exported width to run (default: the only one).
        format: "tflite" (LiteRT) or "onnx" (ONNX Runtime).
        num_threads: Interpreter threads.
        quantization: Which TFLite variant (None/"float32", "float16",
            "dynamic"); default float32.

    Returns:
        A `CascadeResult`.

    Raises:
        ValueError: if the directory has no staged export for that width and
            format, or no thresholds are given or recorded.

    Example:

    >>> result = keras_slim.export.run_cascade("out/", x_test)
    >>> result.labels, result.exits, result.mean_latency_ms
    """
    manifest = mf.read_manifest(out_dir, missing_ok=True)
    info = (manifest or {}).get("early_exit")
    if not info:
        raise ValueError(
            f"'{out_dir}' holds no staged early-exit export (no manifest "
            "with an 'early_exit' section); export with "
            "keras_slim.export.to_tflite(early_exit_model, out_dir)."
        )
    records = info["widths"]
    if width is None:
        if len(records) != 1:
            raise ValueError(
                f"'{out_dir}' holds stages for several widths "
                f"({sorted(records)}); pass `width`."
            )
        (tag,) = records
    else:
        tag = width_suffix(width)
        if tag not in records:
            raise ValueError(
                f"No staged export for width {width!r} in '{out_dir}'; it "
                f"has {sorted(records)}."
            )
    record = records[tag]
    key = format if quantization in (None, "float32") else (
        f"{format}_{quantization}"
    )
    if key not in record.get("files", {}):
        raise ValueError(
            f"No {key} stages for width {tag} in '{out_dir}'; it has "
            f"{sorted(record.get('files', {}))}."
        )
    num_exits = info["num_exits"]
    if thresholds is None:
        if record.get("thresholds") is None:
            raise ValueError(
                "No thresholds: pass `thresholds` (an ExitPolicy or "
                f"{num_exits - 1} numbers) or export with thresholds=."
            )
        thresholds = record["thresholds"]
    values, _ = budget_lib.check_thresholds(thresholds, num_exits)
    runners = [
        _Runner(os.path.join(out_dir, name), format, num_threads)
        for name in record["files"][key]["stages"]
    ]
    images = mf.check_run_inputs(
        images, [None] + list(manifest["input_shape"]),
        manifest.get("input"), f"The stages in '{out_dir}'",
    )
    count = len(images)
    cascade = _cascade_tflite if format == "tflite" else _cascade_generic
    labels, exits, confidences, latency = cascade(runners, images, values)
    macs = np.asarray(record["cumulative_macs"])[exits - 1]
    return CascadeResult(
        labels=labels,
        exits=exits,
        macs=macs,
        latency_ms=latency,
        confidences=confidences,
        width=record.get("width"),
        thresholds=values,
        mean_macs=float(macs.mean()) if count else 0.0,
        mean_latency_ms=float(latency.mean()) if count else 0.0,
    )
