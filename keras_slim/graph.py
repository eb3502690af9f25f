"""Walking the graph of a functional Keras model, with public Keras API.

`keras.models.clone_model(..., call_function=...)` visits every layer and
operation of a functional model in topological order with its actual
arguments; `slim()`, `strip()`, `fold_batch_norm()` and `profile()` all
walk graphs through `replay`, so none of them reads Keras' private node
bookkeeping.
"""

import dataclasses

import keras


def as_functional(model):
    """A functional model computing what `model` computes (same layers).

    Raises:
        ValueError: for a subclassed model or one without a known input.
    """
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ValueError(
                "This needs a built model with a known input shape: add a "
                "keras.Input(shape=...) to the Sequential model or build it."
            )
        inputs = keras.Input(batch_shape=model.inputs[0].shape)
        outputs = inputs
        for layer in model.layers:
            outputs = layer(outputs)
        return keras.Model(inputs, outputs, name=model.name)
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise ValueError(
            "This takes Sequential and functional Keras models; got a "
            f"subclassed model ({type(model).__name__}). Rebuild it with the "
            "functional API."
        )
    return model


def all_layers(model):
    """Every layer of a model, the layers of nested models included.

    Example:

    >>> [layer.name for layer in all_layers(model)]
    """
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


def replay(model, call_function, input_tensors=None):
    """Rebuilds `model`'s graph through `call_function`.

    `call_function(layer, *args, **kwargs)` is called for every layer and
    operation, in topological order, with the new graph's tensors, and
    returns the outputs; nested Sequential and functional models are
    expanded into their own layers first (their layers get the calls).

    Args:
        model: A Sequential or functional model.
        call_function: As `keras.models.clone_model`'s.
        input_tensors: Optional new input tensors.

    Returns:
        The new functional `keras.Model`.

    Example:

    >>> seen = []
    >>> def record(layer, *args, **kwargs):
    ...     seen.append(layer.name)
    ...     return layer(*args, **kwargs)
    >>> replay(model, record)
    """
    expanded = _expand_nested(call_function)
    return keras.models.clone_model(
        as_functional(model),
        input_tensors=input_tensors,
        clone_function=lambda layer: layer,
        call_function=expanded,
    )


def _expand_nested(call_function):
    def call(layer, *args, **kwargs):
        if isinstance(layer, keras.Sequential):
            outputs = args[0]
            # Only `training` applies to every inner layer (not `mask`).
            inner_kwargs = {
                k: v for k, v in kwargs.items() if k == "training"
            }
            for inner in layer.layers:
                outputs = call(inner, outputs, **inner_kwargs)
            return outputs
        if isinstance(layer, keras.Model) and getattr(layer, "inputs", None):
            return _call_traced(layer, args[0], call)
        return call_function(layer, *args, **kwargs)

    return call


def _call_traced(model, inputs, call):
    """Runs a nested functional model's layers one by one on `inputs`.

    `clone_model(..., input_tensors=inputs)` only accepts inputs that are
    `keras.Input`s, so a backbone called on a preprocessed tensor (the usual
    transfer-learning set-up) would fail; replaying the nested model's
    traced calls works on any tensor.
    """
    calls, traced = trace(model)
    values = {
        id(old): new
        for old, new in zip(traced.inputs, keras.tree.flatten(inputs))
    }
    replay_calls(calls, values, call_function=call)
    outputs = [values[id(t)] for t in traced.outputs]
    return outputs[0] if len(outputs) == 1 else outputs


def replay_calls(calls, tensors, override=None, call_function=None,
                 after_call=None):
    """Calls the layers of traced `calls` again, on new tensors.

    The one graph replay of keras_slim: nested models (`replay`), the
    stages and exits of an early-exit network, and the search's segments
    all rebuild parts of a traced graph through it.

    Args:
        calls: `Call`s from `trace`, in topological order.
        tensors: dict `id(original tensor) -> new tensor` holding at least
            the inputs of the first calls; filled in with each call's
            outputs.
        override: Optional `override(call) -> dict` of replacements for
            `tensors` seen by that call only.
        call_function: `fn(layer, *args, **kwargs) -> outputs` (default:
            call the layer).
        after_call: Optional `after_call(call, tensors)`, run after each
            call (e.g. to drop tensors no later call reads).

    Returns:
        `tensors`.

    Raises:
        ValueError: if a call reads a tensor that `tensors` does not hold.

    Example:

    >>> calls, traced = trace(model)
    >>> entry = keras.Input(traced.inputs[0].shape[1:])
    >>> tensors = replay_calls(calls, {id(traced.inputs[0]): entry})
    >>> copy = keras.Model(entry, tensors[id(traced.outputs[0])])
    """
    for call in calls:
        mapping = tensors
        extra = override(call) if override is not None else None
        if extra:
            mapping = {**tensors, **extra}
        if any(id(t) not in mapping for t in call.inputs):
            raise ValueError(
                f"Layer '{call.layer.name}' reads a tensor outside the part "
                "of the graph being rebuilt."
            )
        args, kwargs = keras.tree.map_structure(
            lambda v: mapping[id(v)] if isinstance(v, keras.KerasTensor)
            else v,
            (call.args, call.kwargs),
        )
        if call_function is None:
            outputs = call.layer(*args, **kwargs)
        else:
            outputs = call_function(call.layer, *args, **kwargs)
        for old, new in zip(call.outputs, keras.tree.flatten(outputs)):
            tensors[id(old)] = new
        if after_call is not None:
            after_call(call, tensors)
    return tensors


@dataclasses.dataclass
class Call:
    """One call of a layer or operation in a traced graph."""

    layer: object
    args: tuple
    kwargs: dict
    outputs: list

    @property
    def inputs(self):
        """The KerasTensors among the arguments, in order."""
        return [
            t for t in keras.tree.flatten((self.args, self.kwargs))
            if isinstance(t, keras.KerasTensor)
        ]


def trace(model, input_tensors=None):
    """Every call of a model's graph, in topological order.

    Args:
        model: A Sequential or functional model (nested models are
            expanded).
        input_tensors: Optional new inputs (e.g. another image size).

    Returns:
        `(calls, traced)`: a list of `Call` and the traced functional model
        whose tensors the calls refer to (`traced.outputs` are the model's
        outputs).

    Example:

    >>> calls, traced = trace(model)
    >>> [type(c.layer).__name__ for c in calls][:3]
    ['Conv2D', 'BatchNormalization', 'ReLU']
    """
    calls = []

    def record(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        calls.append(Call(layer, args, kwargs, keras.tree.flatten(outputs)))
        return outputs

    functional = as_functional(model)
    if functional.compiled:
        # clone_model would compile the traced copy as well (a second
        # optimizer, its variables built); the trace needs the graph only.
        functional = keras.Model(
            functional.input, functional.output, name=functional.name
        )
    traced = replay(functional, record, input_tensors=input_tensors)
    return calls, traced


def shapes_match(expected, got):
    """Whether a per-example shape `got` fits a model input's `expected`
    one (`None` sizes accept any).

    Example:

    >>> shapes_match((None, None, 3), (32, 32, 3))
    True
    """
    return len(got) == len(expected) and all(
        e is None or e == g for e, g in zip(expected, got))
