"""A slimmable network's graph as a list of calls that can run in pieces.

`keras_slim.graph.trace` lists every layer call of the network in
topological order; `Program` runs any contiguous range of those calls on
real tensors, so a search can stop the network at a cut, keep only the
tensors that cross it, and later run the rest from there (see
`keras_slim.search.runner`).
"""

import numpy as np

from keras_slim import graph
from keras_slim.layers import scope as aw


class Program:
    """The calls of `model.network` in topological order, runnable by range.

    Args:
        model: A `keras_slim.SlimmableModel`.

    Example:

    >>> program = Program(model)
    >>> live = program.run(0, program.cut_size, {program.input_id: x},
    ...                    state)  # the whole network
    >>> logits = live[program.output_id]
    """

    def __init__(self, model):
        self.model = model
        calls, traced = graph.trace(model.network)
        if len(traced.inputs) != 1 or len(traced.outputs) != 1:
            raise ValueError(
                "keras_slim.search supports networks with one input and one "
                f"output; '{model.name}' has {len(traced.inputs)} inputs and "
                f"{len(traced.outputs)} outputs."
            )
        self.calls = calls
        self.input_id = id(traced.inputs[0])
        self._input = traced.inputs[0]
        self.output_id = id(traced.outputs[0])
        self.cut_size = len(calls)
        # Last call index reading each tensor (the output is read "after"
        # the last call), so a cut keeps exactly the tensors still needed.
        self._last_use = {self.output_id: len(calls)}
        for index, call in enumerate(calls):
            for tensor in call.inputs:
                self._last_use[id(tensor)] = max(
                    self._last_use.get(id(tensor), -1), index
                )
        self._index = {id(call): index for index, call in enumerate(calls)}
        self._producer = {self.input_id: -1}
        for index, call in enumerate(calls):
            for tensor in call.outputs:
                self._producer[id(tensor)] = index

    def live_at(self, cut):
        """Ids of the tensors crossing a cut before call index `cut`.

        They are produced before `cut` (or are the input) and read at or
        after it (or are the output), in a fixed order.
        """
        return sorted(
            (
                tensor_id
                for tensor_id, producer in self._producer.items()
                if producer < cut and self._last_use.get(tensor_id, -2) >= cut
            ),
            key=lambda tensor_id: (self._producer[tensor_id], tensor_id),
        )

    def peak_bytes_per_image(self):
        """Most activation bytes held at once by one image's forward pass
        at full width: the tensors crossing a cut plus the outputs of the
        call after it, at its largest (unknown dimensions count as 1)."""
        sizes = {}
        for tensor in [self._input] + [
                t for call in self.calls for t in call.outputs]:
            elements = np.prod([d or 1 for d in tensor.shape[1:]])
            sizes[id(tensor)] = int(elements) * np.dtype(
                tensor.dtype).itemsize
        peak = 0
        for index, call in enumerate(self.calls):
            held = sum(sizes.get(t, 0) for t in self.live_at(index))
            peak = max(peak, held + sum(
                sizes.get(id(t), 0) for t in call.outputs))
        return peak

    def run(self, start, stop, values, state, keep=None):
        """Runs calls `start` to `stop - 1` inside the width scope `state`.

        Args:
            start, stop: Call indices.
            values: dict tensor id -> tensor for every tensor crossing the
                cut at `start` (`live_at(start)`).
            state: The `keras_slim.layers.scope.ActiveWidth` to run at.
            keep: Tensor ids to return; default those crossing `stop`.

        Returns:
            dict tensor id -> tensor.
        """
        keep = set(self.live_at(stop) if keep is None else keep)
        values = dict(values)

        def release(call, values):
            # Free what no later call reads (1,024-image activations are
            # large).
            index = self._index[id(call)]
            for tensor in call.inputs:
                if (self._last_use.get(id(tensor), -1) <= index
                        and id(tensor) not in keep):
                    values.pop(id(tensor), None)

        with aw.active_width(state):
            graph.replay_calls(self.calls[start:stop], values,
                               after_call=release)
        return {tensor_id: values[tensor_id] for tensor_id in keep}
