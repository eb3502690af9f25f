"""Metric objects of the multi-width step, built from `compile` specs."""

import keras


def _accuracy(y_true, y_pred):
    # "accuracy" means sparse or categorical accuracy depending on the labels,
    # decided from static shapes at trace time, as Keras' compile does.
    if y_true.shape.rank == y_pred.shape.rank and y_true.shape[-1] != 1:
        return keras.metrics.categorical_accuracy(y_true, y_pred)
    return keras.metrics.sparse_categorical_accuracy(y_true, y_pred)


def make_metric(spec, suffix=None):
    """A fresh metric from a compile spec, named `<name>_<suffix>`.

    Each output and each logged width gets its own metric object, so one
    spec ("accuracy") becomes `accuracy_exit3`, `accuracy_w0.25`, ...

    Args:
        spec: A metric name, a `keras.metrics.Metric` (instance or class)
            or a function `(y_true, y_pred) -> values`.
        suffix: Appended to the name; None keeps the plain name.

    Returns:
        A new `keras.metrics.Metric`.

    Example:

    >>> make_metric("accuracy", "w0.25").name
    'accuracy_w0.25'
    """

    def named(name):
        return name if suffix is None else f"{name}_{suffix}"

    if isinstance(spec, str):
        if spec in ("accuracy", "acc"):
            return keras.metrics.MeanMetricWrapper(_accuracy, named(spec))
        metric = keras.metrics.get(spec)
        name = spec
    else:
        metric, name = spec, getattr(spec, "name", None)
    if isinstance(metric, keras.metrics.Metric):
        config = dict(metric.get_config(), name=named(metric.name))
        return type(metric).from_config(config)
    if isinstance(metric, type) and issubclass(metric, keras.metrics.Metric):
        instance = metric()
        return type(instance).from_config(
            dict(instance.get_config(), name=named(instance.name))
        )
    if callable(metric):
        name = name or getattr(metric, "__name__", "metric")
        return keras.metrics.MeanMetricWrapper(metric, named(name))
    raise ValueError(
        f"Unsupported metric {spec!r}: pass a metric name, a "
        "keras.metrics.Metric or a function (y_true, y_pred) -> values."
    )
