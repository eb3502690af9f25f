"""The stages of an early-exit network's functional graph.

An early-exit network with `N` exits is cut, after the layers named in
`after`, into `N` stages: stage 1 runs from the input to the first cut and
exit 1's logits; stage `k` runs from the features at cut `k - 1` to the
features at cut `k` and exit `k`'s logits; the last stage ends at the final
output. `ExitStructure` finds each stage's layer calls by walking the graph
back from its outputs and checks what makes staged inference possible: every
stage is computable from the features the previous stage hands on (so each
cut is a true cut point of the network), and no layer belongs to two stages
(nothing is computed twice). The exporters rebuild stage models from these
call lists (`keras_slim.graph.replay_calls`), and the MAC count of each exit is the sum over its
stages.

The graph is read with `keras_slim.graph.trace` (public Keras API only):
its `Call`s and tensors belong to a traced copy of the network that shares
the network's layers, so the tensors `ExitStructure` holds (input, cuts,
outputs) are the traced copy's, and a call's producer is looked up in a map
from tensor ids to calls instead of in Keras' node bookkeeping.
"""

import keras

from keras_slim import graph as graph_lib


def producers(calls):
    """A dict `id(tensor) -> Call` from each call's outputs to the call."""
    return {id(t): call for call in calls for t in call.outputs}


def input_layer_name(model):
    """The name of the `InputLayer` of a one-input functional `model`.

    `keras.Input(shape)` names the layer ("input_layer") and its tensor
    ("keras_tensor") differently; a rebuilt network keeps the layer's name.
    """
    (tensor,) = model.inputs
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) and (
            layer.output is tensor
        ):
            return layer.name
    return tensor.name


def layer_call(calls, name):
    """The single call of layer `name` among `calls` (from `trace`).

    Raises:
        ValueError: if no call is of such a layer, or the layer is called
            more than once (its output would be ambiguous).
    """
    matches = [c for c in calls if c.layer.name == name]
    if not matches:
        names = [c.layer.name for c in calls]
        raise ValueError(
            f"The network has no layer '{name}'. Its layers include: "
            f"{names[:12]}{' ...' if len(names) > 12 else ''}."
        )
    if len(matches) > 1:
        raise ValueError(
            f"Layer '{name}' is called {len(matches)} times in the network; "
            "an exit must follow a layer that is called once."
        )
    return matches[0]


def ancestors(tensors, producer, stop=()):
    """Calls needed to compute `tensors`, not looking past `stop` tensors.

    Args:
        tensors: Tensors of a traced graph.
        producer: `producers(calls)` of that graph.
        stop: Tensors taken as given.

    Returns:
        `(call_ids, reached_input)`: the ids of the calls, and whether the
        walk reached a model input (a tensor no call produces).
    """
    stop = {id(t) for t in stop}
    seen, reached_input = set(), False
    pending = [t for t in tensors if id(t) not in stop]
    while pending:
        call = producer.get(id(pending.pop()))
        if call is None:
            reached_input = True
            continue
        if id(call) in seen:
            continue
        seen.add(id(call))
        pending.extend(t for t in call.inputs if id(t) not in stop)
    return seen, reached_input


class ExitStructure:
    """Stages, cut tensors and head layers of an early-exit functional graph.

    Args:
        network: A functional model with one input and `N` outputs (exit
            logits, in exit order).
        after: The `N - 1` layer names after which the early exits branch
            off (the cuts).

    Attributes:
        calls: Every `keras_slim.graph.Call` of the network, in topological
            order (nested models expanded), from `keras_slim.graph.trace`.
        input: The input tensor the calls start from.
        input_name: The name of the network's input layer.
        cuts: The `N - 1` cut tensors (outputs of the `after` layers).
        outputs: The `N` exit outputs.
        stage_calls: Per stage, its calls in topological order.
        stage_layers: Per stage, the names of its layers.
        head_calls: Per early exit, the calls only its output needs (the
            exit head; empty list for the last exit).

    The tensors (`input`, `cuts`, `outputs` and those of the calls) belong
    to a traced copy of `network` that shares its layers: rebuild stages
    from them with `replay`.

    Raises:
        ValueError: naming the problem, if a stage needs more than the
            previous stage's features, a layer would run in two stages, the
            cuts are not in computation order, or an exit's head is empty.

    Example:

    >>> structure = ExitStructure(model.network, model.after)
    >>> structure.stage_layers[0][:2]
    ['conv1', 'bn1']
    """

    def __init__(self, network, after):
        if len(network.inputs) != 1:
            raise ValueError(
                "An early-exit network must have exactly one input; this one "
                f"has {len(network.inputs)}."
            )
        self.input_name = input_layer_name(network)
        self.calls, traced = graph_lib.trace(network)
        (self.input,) = traced.inputs
        self.outputs = list(traced.outputs)
        num_exits = len(self.outputs)
        after = list(after)
        if len(after) != num_exits - 1:
            raise ValueError(
                f"The network has {num_exits} outputs (exits), so `after` "
                f"must name {num_exits - 1} layers (where the early exits "
                f"branch off); got {len(after)}: {after}."
            )
        self.after = after
        producer = producers(self.calls)
        self._producer = producer
        self.cuts = [layer_call(self.calls, name).outputs[0] for name in after]
        self.stage_calls, self.head_calls = [], []
        previous_ids = set()
        for k in range(num_exits):
            targets = [self.outputs[k]]
            if k < num_exits - 1:
                targets.append(self.cuts[k])
            stop = [self.cuts[k - 1]] if k > 0 else []
            ids, reached_input = ancestors(targets, producer, stop)
            if k > 0 and reached_input:
                what = f"Exit {k + 1}" + (
                    f" (or the cut '{after[k]}')" if k < len(after) else ""
                )
                raise ValueError(
                    f"{what} needs more than the features after layer "
                    f"'{after[k - 1]}': some path from the input bypasses "
                    "that layer (e.g. a skip connection across it), or the "
                    "layers in `after` are not in the order the network "
                    "computes them. Place exits after layers every path "
                    "passes through, in computation order."
                )
            shared = ids & previous_ids
            if shared:
                call = next(c for c in self.calls if id(c) in shared)
                raise ValueError(
                    f"Layer '{call.layer.name}' would run in stage {k} "
                    f"and stage {k + 1}: exit {k} depends on layers after "
                    f"the cut '{after[k - 1]}', or the cuts are not in "
                    "computation order."
                )
            # `self.calls` is in topological order, so each stage is too.
            calls = [c for c in self.calls if id(c) in ids]
            self.stage_calls.append(calls)
            previous_ids = ids
            if k < num_exits - 1:
                head_ids, _ = ancestors(
                    [self.outputs[k]], producer, [self.cuts[k]]
                )
                if not head_ids:
                    raise ValueError(
                        f"Exit {k + 1}'s output is the output of '{after[k]}' "
                        "itself; an exit needs a head (e.g. "
                        "keras_slim.layers.ExitHead) after the cut."
                    )
                self.head_calls.append(
                    [c for c in calls if id(c) in head_ids]
                )
        self.stage_layers = [
            [c.layer.name for c in calls] for calls in self.stage_calls
        ]

    @property
    def num_exits(self):
        return len(self.outputs)

    def output_layer_names(self):
        """The name of the layer that produces each exit's output."""
        return [self._producer[id(t)].layer.name for t in self.outputs]


def new_input_like(tensor, name):
    """A fresh `keras.Input` with the shape and dtype of `tensor`."""
    return keras.Input(
        batch_shape=tuple(tensor.shape), dtype=tensor.dtype, name=name
    )
