"""`add_exits`: turn a Keras backbone into an `EarlyExitModel`."""

import keras

from keras_slim import graph as graph_lib
from keras_slim.early_exit import graph
from keras_slim.early_exit.model import EarlyExitModel
from keras_slim.layers.exit_head import ExitHead
from keras_slim.layers.exit_head import GradientRescale
from keras_slim.layers.convolution import SlimKernelMixin
from keras_slim.model import SlimmableModel
from keras_slim.training import boosting


def _functional(backbone):
    try:
        return graph_lib.as_functional(backbone)
    except ValueError as error:
        raise ValueError(
            f"add_exits() takes a built Sequential or functional Keras model "
            f"(or a keras_slim.SlimmableModel of one): {error}"
        ) from None


def _slim_settings(model):
    """`slim()` arguments that rebuild `model`'s width behaviour.

    Those it was made with when `slim()` made it (every option: fixed
    layers, kept ratios, BN settings); for a network built by hand, what
    can be read off its layers.
    """
    if model.slim_options is not None:
        return {k: v for k, v in model.slim_options.items() if v is not None}
    triangular = any(
        getattr(layer, "triangular", False)
        for layer in graph_lib.all_layers(model.network)
        if isinstance(layer, SlimKernelMixin)
    )
    settings = {
        "divisor": model.divisor,
        "min_channels": model.min_channels,
        "triangular": triangular,
    }
    if model.widths is not None:
        settings["widths"] = list(model.widths)
        settings["switchable_bn"] = model.switchable
    else:
        settings["width_range"] = tuple(model.width_range)
    return settings


def _head_for(head, index, num_classes):
    name = f"exit{index}_head"
    if head is None:
        head = ExitHead()
    if isinstance(head, ExitHead):
        config = dict(head.get_config(), name=name)
        if config.get("num_classes") not in (None, num_classes):
            raise ValueError(
                f"The head template has num_classes={config['num_classes']} "
                f"but the backbone outputs {num_classes} classes."
            )
        config["num_classes"] = num_classes
        return lambda x: ExitHead.from_config(config).inline(x)
    if callable(head):
        return lambda x: head(x, index)
    raise ValueError(
        "`head` must be None (a default ExitHead), an ExitHead used as a "
        "template, or a function (features, exit_index) -> logits tensor; "
        f"got {head!r}."
    )


def insert_gradient_rescale(network, after):
    """Rebuilds `network` with MSDNet's gradient equilibrium at each exit.

    After each cut, the exit head reads the features through a
    `GradientRescale(1 / (N - i))` and the rest of the network through a
    `GradientRescale((N - i - 1) / (N - i))` (see
    `keras_slim.training.boosting.gradient_rescale_scales`). The forward
    pass is unchanged; the layers are shared with `network`.

    Args:
        network: A functional early-exit network (one output per exit).
        after: The layer names of its cuts.

    Returns:
        A new functional `keras.Model`.
    """
    structure = graph.ExitStructure(network, after)
    scales = boosting.gradient_rescale_scales(structure.num_exits)
    cut_ids = {id(t): k for k, t in enumerate(structure.cuts)}
    head_entry = {}  # id(call) -> index of the cut it reads
    for k, calls in enumerate(structure.head_calls):
        for call in calls:
            if any(id(t) == id(structure.cuts[k]) for t in call.inputs):
                head_entry[id(call)] = k
    new_input = graph.new_input_like(structure.input, structure.input_name)
    tensors = {id(structure.input): new_input}
    head_inputs = {}

    def override(call):
        k = head_entry.get(id(call))
        return None if k is None else {id(structure.cuts[k]): head_inputs[k]}

    for call in structure.calls:
        graph.replay([call], tensors, override)
        for tensor in call.outputs:
            k = cut_ids.get(id(tensor))
            if k is None:
                continue
            head_scale, trunk_scale = scales[k]
            features = tensors[id(tensor)]
            head_inputs[k] = GradientRescale(
                head_scale, name=f"exit{k + 1}_head_grad_rescale"
            )(features)
            tensors[id(tensor)] = GradientRescale(
                trunk_scale, name=f"exit{k + 1}_trunk_grad_rescale"
            )(features)
    outputs = [tensors[id(t)] for t in structure.outputs]
    return keras.Model(new_input, outputs, name=network.name)


def add_exits(
    backbone,
    after,
    head=None,
    ensemble_weight=0.5,
    gradient_rescale=True,
    width_range=None,
    widths=None,
    name=None,
    **slim_kwargs,
):
    """Adds early exits to a Keras backbone: an `EarlyExitModel`.

    After each layer named in `after`, a head (by default a
    `keras_slim.layers.ExitHead`) classifies the features there; the
    backbone's own output is the last exit. Layers and weights of the
    backbone are kept. Each exit layer must be one every path from the input
    passes through (a block output, not a layer inside a residual block):
    staged inference hands on exactly that tensor.

    Width and depth together: pass `width_range` or `widths` (and any
    `keras_slim.slim` argument) to make backbone and heads slimmable, or
    pass a `SlimmableModel` whose max width is 1.0 (its weights at width 1.0
    and its width settings are used; per-width private BN rows and BN
    calibrations are not carried over: recalibrate after training).

    Args:
        backbone: A functional or Sequential Keras model with one input and
            one output (logits), or a `keras_slim.SlimmableModel`.
        after: Layer names, in the order the network computes them, after
            which exits branch off.
        head: None (a default `ExitHead`), an `ExitHead` used as a template
            (copied per exit as `exit<k>_head`, `num_classes` filled in), or
            a function `(features, exit_index) -> logits` that builds a
            custom head with Keras layers.
        ensemble_weight: BoostNet's `t` (see `EarlyExitModel`); 0 gives
            plain joint training (MSDNet).
        gradient_rescale: Insert MSDNet's gradient equilibrium
            (`GradientRescale` layers; identity at inference).
        width_range, widths: Make the network slimmable (see
            `keras_slim.slim`).
        name: Model name (default: the backbone's name + "_exits").
        **slim_kwargs: More arguments of `keras_slim.slim` (divisor,
            triangular, bn_momentum, ...).

    Returns:
        A `keras_slim.EarlyExitModel`.

    Raises:
        ValueError: for an empty `after`, an unknown or repeated layer, a
            layer that is not a cut point, exits out of computation order, or
            a backbone with several inputs or outputs.

    Example:

    >>> backbone = keras_slim.models.resnet20(slimmable=False)
    >>> model = keras_slim.add_exits(
    ...     backbone, after=["stage1_block3_relu", "stage2_block3_relu"],
    ...     head=keras_slim.layers.ExitHead(filters=(32,)))
    >>> [e["macs"] for e in model.exits]
    """
    from keras_slim.convert import slim
    from keras_slim.stripping import strip

    if isinstance(after, str):
        after = [after]
    after = list(after or [])
    if not after:
        raise ValueError(
            "add_exits() needs at least one layer name in `after`: a model "
            "without early exits is just the backbone."
        )
    if len(set(after)) != len(after) or not all(
        isinstance(a, str) for a in after
    ):
        raise ValueError(
            f"`after` must list distinct layer names; got {after}."
        )
    settings = dict(slim_kwargs)
    if width_range is not None:
        settings["width_range"] = width_range
    if widths is not None:
        settings["widths"] = widths
    if isinstance(backbone, SlimmableModel):
        if backbone.width_range[1] != 1.0:
            raise ValueError(
                "add_exits() rebuilds a SlimmableModel from its weights at "
                f"width 1.0; this one's max width is "
                f"{backbone.width_range[1]}. Pass the stock Keras backbone "
                "with width_range/widths instead."
            )
        inherited = _slim_settings(backbone)
        if width_range is not None or widths is not None:
            inherited.pop("widths", None)
            inherited.pop("width_range", None)
        settings = {**inherited, **settings}
        backbone = strip(backbone, 1.0)
    functional = _functional(backbone)
    if len(functional.inputs) != 1 or len(functional.outputs) != 1:
        raise ValueError(
            "add_exits() needs a backbone with one input and one output "
            f"(logits); this one has {len(functional.inputs)} inputs and "
            f"{len(functional.outputs)} outputs."
        )
    output = functional.outputs[0]
    if len(output.shape) != 2:
        raise ValueError(
            "The backbone's output must be logits of shape (batch, classes); "
            f"got {tuple(output.shape)}."
        )
    num_classes = int(output.shape[-1])
    calls, traced = graph_lib.trace(functional)
    (traced_output,) = traced.outputs
    last_call = graph.producers(calls).get(id(traced_output))
    output_layer = (
        last_call.layer.name if last_call is not None
        else graph.input_layer_name(functional)  # the output is the input
    )
    if output_layer in after:
        raise ValueError(
            f"'{output_layer}' is the backbone's output layer: the last exit "
            "is always the backbone's own output."
        )
    input_name = graph.input_layer_name(functional)
    if input_name in after:
        raise ValueError(
            f"'{input_name}' is the backbone's input: an exit reads the "
            "features of a layer after it. Name a layer of the backbone "
            f"(e.g. {[c.layer.name for c in calls][:4]})."
        )
    cut_calls = {id(graph.layer_call(calls, n)): i
                 for i, n in enumerate(after)}

    # The backbone's graph again, with a head after every cut.
    (traced_input,) = traced.inputs
    new_input = graph.new_input_like(
        traced_input, graph.input_layer_name(functional)
    )
    tensors = {id(traced_input): new_input}
    exit_outputs = {}
    for call in calls:
        graph.replay([call], tensors)
        if id(call) in cut_calls:
            k = cut_calls[id(call)]
            build = _head_for(head, k + 1, num_classes)
            exit_outputs[k] = build(tensors[id(call.outputs[0])])
    outputs = [exit_outputs[k] for k in range(len(after))]
    outputs.append(tensors[id(traced_output)])
    network = keras.Model(new_input, outputs, name=functional.name)
    graph.ExitStructure(network, after)  # clear errors before slimming

    model_kwargs = {}
    if settings:
        slim_model = slim(network, **settings)
        network = slim_model.network
        model_kwargs = {
            "divisor": slim_model.divisor,
            "min_channels": slim_model.min_channels,
            "base_channels": slim_model.base_channels,
            "derived_groups": slim_model.derived_groups,
            "group_divisors": slim_model.group_divisors,
            "slim_options": slim_model.slim_options,
        }
        if slim_model.widths is not None:
            model_kwargs["widths"] = slim_model.widths
        else:
            model_kwargs["width_range"] = slim_model.width_range
    if gradient_rescale:
        network = insert_gradient_rescale(network, after)
    return EarlyExitModel(
        network,
        after=after,
        ensemble_weight=ensemble_weight,
        name=name or f"{functional.name}_exits",
        **model_kwargs,
    )
