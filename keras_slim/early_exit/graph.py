"""The stages of an early-exit network's functional graph.

An early-exit network with `N` exits is cut, after the layers named in
`after`, into `N` stages: stage 1 runs from the input to the first cut and
exit 1's logits; stage `k` runs from the features at cut `k - 1` to the
features at cut `k` and exit `k`'s logits; the last stage ends at the final
output. `ExitStructure` finds each stage's layers by walking the graph back
from its outputs and checks what makes staged inference possible: every
stage is computable from the features the previous stage hands on (so each
cut is a true cut point of the network), and no layer belongs to two stages
(nothing is computed twice). The exporters rebuild stage models from these
node lists (`replay`), and the MAC count of each exit is the sum over its
stages.
"""

import keras


def _producer(tensor):
    operation, node_index, _ = tensor._keras_history
    return operation._inbound_nodes[node_index]


def network_nodes(network):
    """The nodes of a functional model, inputs first (topological order)."""
    depths = sorted(network._nodes_by_depth, reverse=True)
    return [node for d in depths for node in network._nodes_by_depth[d]]


def layer_node(network, name):
    """The single node of layer `name` in `network`.

    Raises:
        ValueError: if the network has no such layer, or calls it more than
            once (its output would be ambiguous).
    """
    nodes = [
        n for n in network_nodes(network)
        if n.operation is not None and n.operation.name == name
    ]
    if not nodes:
        names = [
            n.operation.name for n in network_nodes(network)
            if n.operation is not None and not n.is_input
        ]
        raise ValueError(
            f"The network has no layer '{name}'. Its layers include: "
            f"{names[:12]}{' ...' if len(names) > 12 else ''}."
        )
    if len(nodes) > 1:
        raise ValueError(
            f"Layer '{name}' is called {len(nodes)} times in the network; an "
            "exit must follow a layer that is called once."
        )
    return nodes[0]


def ancestors(tensors, stop=()):
    """Nodes needed to compute `tensors`, not looking past `stop` tensors.

    Returns:
        `(node_ids, reached_input)`: the ids of the (non-input) nodes, and
        whether the walk reached a model input.
    """
    stop = {id(t) for t in stop}
    seen, reached_input = set(), False
    pending = [t for t in tensors if id(t) not in stop]
    while pending:
        node = _producer(pending.pop())
        if id(node) in seen:
            continue
        if node.is_input:
            reached_input = True
            continue
        seen.add(id(node))
        pending.extend(t for t in node.input_tensors if id(t) not in stop)
    return seen, reached_input


class ExitStructure:
    """Stages, cut tensors and head layers of an early-exit functional graph.

    Args:
        network: A functional model with one input and `N` outputs (exit
            logits, in exit order).
        after: The `N - 1` layer names after which the early exits branch
            off (the cuts).

    Attributes:
        cuts: The `N - 1` cut tensors (outputs of the `after` layers).
        outputs: The `N` exit outputs.
        stage_nodes: Per stage, its nodes in topological order.
        stage_layers: Per stage, the names of its layers.
        head_nodes: Per early exit, the nodes only its output needs (the
            exit head; empty list for the last exit).

    Raises:
        ValueError: naming the problem, if a stage needs more than the
            previous stage's features, a layer would run in two stages, the
            cuts are not in computation order, or an exit's head is empty.
    """

    def __init__(self, network, after):
        if len(network.inputs) != 1:
            raise ValueError(
                "An early-exit network must have exactly one input; this one "
                f"has {len(network.inputs)}."
            )
        self.outputs = list(network.outputs)
        num_exits = len(self.outputs)
        after = list(after)
        if len(after) != num_exits - 1:
            raise ValueError(
                f"The network has {num_exits} outputs (exits), so `after` "
                f"must name {num_exits - 1} layers (where the early exits "
                f"branch off); got {len(after)}: {after}."
            )
        self.after = after
        self.cuts = [layer_node(network, name).outputs[0] for name in after]
        order = network_nodes(network)
        position = {id(node): i for i, node in enumerate(order)}
        self.stage_nodes, self.head_nodes = [], []
        previous_ids = set()
        for k in range(num_exits):
            targets = [self.outputs[k]]
            if k < num_exits - 1:
                targets.append(self.cuts[k])
            stop = [self.cuts[k - 1]] if k > 0 else []
            ids, reached_input = ancestors(targets, stop)
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
                node = next(n for n in order if id(n) in shared)
                raise ValueError(
                    f"Layer '{node.operation.name}' would run in stage {k} "
                    f"and stage {k + 1}: exit {k} depends on layers after "
                    f"the cut '{after[k - 1]}', or the cuts are not in "
                    "computation order."
                )
            nodes = sorted(
                (n for n in order if id(n) in ids), key=lambda n: position[id(n)]
            )
            self.stage_nodes.append(nodes)
            previous_ids = ids
            if k < num_exits - 1:
                head_ids, _ = ancestors([self.outputs[k]], [self.cuts[k]])
                if not head_ids:
                    raise ValueError(
                        f"Exit {k + 1}'s output is the output of '{after[k]}' "
                        "itself; an exit needs a head (e.g. "
                        "keras_slim.layers.ExitHead) after the cut."
                    )
                self.head_nodes.append(
                    [n for n in nodes if id(n) in head_ids]
                )
        self.stage_layers = [
            [n.operation.name for n in nodes] for nodes in self.stage_nodes
        ]

    @property
    def num_exits(self):
        return len(self.outputs)

    def output_layer_names(self):
        """The name of the layer that produces each exit's output."""
        return [t._keras_history.operation.name for t in self.outputs]


def replay(nodes, tensor_map, override=None):
    """Calls the layers of `nodes` again on the tensors of `tensor_map`.

    Args:
        nodes: Nodes in topological order.
        tensor_map: dict `id(original tensor) -> new tensor`; filled in with
            each replayed node's outputs.
        override: Optional `override(node) -> dict` of replacements for
            `tensor_map` seen by that node only.

    Returns:
        `tensor_map`.
    """
    for node in nodes:
        mapping = tensor_map
        extra = override(node) if override is not None else None
        if extra:
            mapping = {**tensor_map, **extra}
        missing = [t for t in node.input_tensors if id(t) not in mapping]
        if missing:
            raise ValueError(
                f"Layer '{node.operation.name}' reads a tensor outside the "
                "part of the graph being rebuilt."
            )
        args, kwargs = node.arguments.fill_in(mapping)
        outputs = node.operation(*args, **kwargs)
        for old, new in zip(node.outputs, keras.tree.flatten(outputs)):
            tensor_map[id(old)] = new
    return tensor_map


def new_input_like(tensor, name):
    """A fresh `keras.Input` with the shape and dtype of `tensor`."""
    return keras.Input(
        batch_shape=tuple(tensor.shape), dtype=tensor.dtype, name=name
    )
