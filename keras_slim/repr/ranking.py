"""Filter ranking for RePr: which convolution filters are most redundant.

RePr (Prakash et al., CVPR 2019) measures a filter's redundancy by its
overlap with the other filters of its layer. For a convolution with `N`
filters, `W` holds one flattened filter per row, each row scaled to unit L2
norm; `P = |W Wᵀ − I|`; a filter's score is the sum of its row of `P`
divided by `N`. Filters of every ranked layer are then sorted together (one
global cut-off), highest score first. The first convolution is excluded by
default, as in the author's code.

Where the author's code differs (and this module follows the paper): it
normalises the whole kernel tensor by one norm instead of each filter, and
scores a filter by the absolute mean of its signed off-diagonal entries
rather than the sum of their absolute values.
"""

import contextlib
import dataclasses

import keras
import numpy as np
import tensorflow as tf

METHODS = ("orthogonality", "l1", "l2")

# Score of a filter that is entirely zero under "orthogonality". Any real
# filter scores below (N - 1) / N < 1: a dead filter computes nothing and
# is the first to go.
DEAD_FILTER_SCORE = 1.0


def single_threaded_blas():
    """A context in which numpy's BLAS/LAPACK run on one thread.

    RePr's matrices are small (a few hundred rows): a multi-threaded BLAS
    only adds synchronisation, and on a loaded machine its spinning threads
    made a 1 ms QR take up to 0.5 s. Uses `threadpoolctl` (installed with
    scikit-learn); without it, does nothing.
    """
    try:
        import threadpoolctl
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpoolctl.threadpool_limits(1, user_api="blas")


def ordered_layers(model):
    """All layers of `model`, nested models expanded, in model order.

    Functional and Sequential models list their layers from input to
    output; a nested model (e.g. a `SlimmableModel`'s network) is expanded
    in place.
    """
    result = []

    def visit(layer):
        sublayers = getattr(layer, "layers", None)
        if isinstance(layer, keras.Model) and sublayers is not None:
            for sub in sublayers:
                visit(sub)
        else:
            result.append(layer)

    visit(model)
    return result


def is_conv(layer):
    """Whether `layer` is a standard (not depthwise/separable/transposed)
    convolution: `keras.layers.Conv1D/2D/3D` or a subclass such as
    `keras_slim.layers.SlimConv2D`."""
    return isinstance(
        layer,
        (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D),
    )


def _why_not_rankable(layer):
    """A reason why `layer`'s filters cannot be ranked, or None."""
    if isinstance(
        layer,
        (keras.layers.DepthwiseConv2D, keras.layers.DepthwiseConv1D),
    ):
        return (
            "it is a depthwise convolution: each filter reads its own input "
            "channel, so filters have no common space to be orthogonal in"
        )
    if isinstance(
        layer,
        (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D),
    ):
        return (
            "it is a separable convolution; rank a model whose pointwise "
            "step is a separate 1x1 Conv2D instead"
        )
    if isinstance(
        layer,
        (
            keras.layers.Conv1DTranspose,
            keras.layers.Conv2DTranspose,
            keras.layers.Conv3DTranspose,
        ),
    ):
        return (
            "it is a transposed convolution (its kernel stores filters on "
            "another axis)"
        )
    if not is_conv(layer):
        return f"it is a {type(layer).__name__}, not a convolution"
    if not layer.built:
        return "it is not built yet (call the model on data first)"
    if getattr(layer, "groups", 1) != 1:
        return (
            f"it is a grouped convolution (groups={layer.groups}): its "
            "filters read different input channels"
        )
    return None


def conv_layers(model, exclude_first=True, layers=None):
    """The convolutions RePr ranks, in model order.

    Args:
        model: A built Keras model (functional, Sequential or subclassed;
            nested models such as a `SlimmableModel`'s network included).
        exclude_first: Leave out the first convolution of the model (the
            one reading the images), as the author's code does.
        layers: Optional list of layer names (or layers) to rank instead
            of every convolution. `exclude_first` does not apply to it.

    Returns:
        A list of layers.

    Raises:
        ValueError: if the model has no convolution to rank, or a listed
            layer is not one (saying why).
    """
    everything = ordered_layers(model)
    if layers is not None:
        by_name = {layer.name: layer for layer in everything}
        chosen = []
        for item in layers:
            name = item if isinstance(item, str) else getattr(item, "name", item)
            if name not in by_name:
                raise ValueError(
                    f"Layer {name!r} is not a layer of model "
                    f"'{model.name}'. Its convolutions: "
                    f"{[l.name for l in everything if is_conv(l)]}."
                )
            layer = by_name[name]
            reason = _why_not_rankable(layer)
            if reason:
                raise ValueError(
                    f"Layer '{name}' cannot be ranked by RePr: {reason}."
                )
            chosen.append(layer)
        if not chosen:
            raise ValueError("`layers` is empty: name at least one conv layer.")
        return chosen
    convs = [layer for layer in everything if is_conv(layer)]
    if exclude_first:
        convs = convs[1:]
    if not convs:
        raise ValueError(
            f"Model '{model.name}' has no convolution to rank"
            + (" besides its first one (exclude_first=True)" if exclude_first
               and any(is_conv(l) for l in everything) else "")
            + ": RePr ranks the filters of keras.layers.Conv1D/2D/3D layers "
            "(and keras_slim's SlimConv2D)."
        )
    for layer in convs:
        reason = _why_not_rankable(layer)
        if reason:
            raise ValueError(
                f"Layer '{layer.name}' cannot be ranked by RePr: {reason}. "
                "Pass `layers=[...]` to choose the convolutions to rank."
            )
    return convs


def _to_numpy(value):
    # Through a tensor: numpy's __array__ on a variable is deprecated.
    return np.asarray(tf.convert_to_tensor(value).numpy())


def filter_matrix(layer):
    """The filters of a conv layer, one flattened filter per row.

    A triangular (Any-Width) slim layer's mask is applied first, so the
    rows are the filters the layer actually computes with.

    Returns:
        A float64 array `(filters, fan_in)`.
    """
    kernel = _to_numpy(layer.kernel).astype("float64")
    mask = getattr(layer, "triangular_mask", None)
    if mask is not None:
        kernel = kernel * _to_numpy(mask)
    return kernel.reshape(-1, kernel.shape[-1]).T


def orthogonality_scores(weights):
    """RePr's inter-filter orthogonality score of each row of `weights`.

    Rows are scaled to unit L2 norm, `P = |W Wᵀ − I|`, and row `i` scores
    `sum_j P[i, j] / N`. The diagonal of `P` is zero for unit rows and is
    left out exactly (no rounding residue). A row of zeros scores
    `DEAD_FILTER_SCORE` (1.0), above any real filter.

    Args:
        weights: `(N, fan_in)` array, one filter per row.

    Returns:
        A float64 array of `N` scores in [0, 1]; higher is more redundant.

    Example:

    >>> orthogonality_scores(np.eye(3))
    array([0., 0., 0.])
    """
    weights = np.asarray(weights, "float64")
    count = weights.shape[0]
    norms = np.linalg.norm(weights, axis=1)
    dead = norms <= np.finfo("float64").tiny
    unit = weights / np.where(dead, 1.0, norms)[:, None]
    unit[dead] = 0.0
    overlap = np.abs(unit @ unit.T)
    np.fill_diagonal(overlap, 0.0)
    scores = overlap.sum(axis=1) / count
    scores[dead] = DEAD_FILTER_SCORE
    return scores


@dataclasses.dataclass
class FilterRanking:
    """Filters of several layers, ranked together.

    Attributes:
        method: "orthogonality", "l1" or "l2".
        layer_names: The ranked layers, in model order.
        scores: dict layer name -> float64 array, one score per filter:
            the orthogonality score (higher = more redundant) or the
            filter's L1/L2 norm (lower = less important).
        order: Every `(layer_name, filter_index)`, the first to drop
            first: descending orthogonality score, or ascending norm. Ties
            keep model order, then filter order.
    """

    method: str
    layer_names: list
    scores: dict
    order: list

    def __len__(self):
        return len(self.order)

    def select(self, fraction, min_kept=1, cutoff="global"):
        """The filters a cut-off at `fraction` drops.

        Args:
            fraction: Share of the ranked filters to drop, in (0, 1).
            min_kept: Filters every layer keeps whatever the ranking says
                (a layer without any filter would cut the network).
            cutoff: "global" (the paper): `round(fraction * total)` filters
                (at least one), the first of `order`, wherever they are.
                "per_layer": `round(fraction * N)` of each layer's `N`
                filters, its most redundant ones. The orthogonality score
                of random filters shrinks with their length (about
                `sqrt(2 / (pi * fan_in))`), so a global cut-off takes far
                more from layers with a small fan-in (1x1 convolutions,
                the first stage of a ResNet); "per_layer" does not.

        Returns:
            dict layer name -> sorted int array of dropped filter indices
            (layers with nothing dropped are left out).

        Example:

        >>> ranking.select(0.3)
        {'conv2': array([ 1,  7, 19]), 'conv3': array([4, 5])}
        """
        fraction = check_fraction(fraction)
        check_cutoff(cutoff)
        sizes = {name: len(s) for name, s in self.scores.items()}
        if cutoff == "global":
            total = len(self.order)
            budget = {None: min(total, max(1, _round(fraction * total)))}
        else:
            budget = {name: _round(fraction * size)
                      for name, size in sizes.items()}
        remaining = dict(sizes)
        dropped = {name: [] for name in self.layer_names}
        for name, index in self.order:
            key = None if cutoff == "global" else name
            if budget[key] == 0 or remaining[name] <= min_kept:
                continue
            dropped[name].append(index)
            remaining[name] -= 1
            budget[key] -= 1
        return {
            name: np.asarray(sorted(indices), "int64")
            for name, indices in dropped.items()
            if indices
        }


CUTOFFS = ("global", "per_layer")


def _round(value):
    # Half up, robust to 0.3 * 10 == 3.0000000000000004.
    return int(np.floor(value + 0.5 + 1e-9))


def check_cutoff(cutoff):
    if cutoff not in CUTOFFS:
        raise ValueError(
            f"Unknown cutoff {cutoff!r}; expected 'global' (one cut-off "
            "over all layers, the paper) or 'per_layer'."
        )
    return cutoff


def check_fraction(fraction):
    """Validates a drop fraction: a number strictly between 0 and 1."""
    if isinstance(fraction, bool) or not isinstance(
        fraction, (int, float, np.floating, np.integer)
    ) or not 0.0 < float(fraction) < 1.0:
        raise ValueError(
            "drop_fraction must be a number strictly between 0 and 1 (the "
            f"share of ranked filters dropped each cycle); got {fraction!r}."
        )
    return float(fraction)


def check_method(method):
    if method not in METHODS:
        raise ValueError(
            f"Unknown ranking method {method!r}; expected one of "
            f"{', '.join(repr(m) for m in METHODS)}."
        )
    return method


def score_layer(layer, method):
    """Scores of one conv layer's filters (see `FilterRanking.scores`)."""
    weights = filter_matrix(layer)
    if method == "orthogonality":
        return orthogonality_scores(weights)
    order = 1 if method == "l1" else 2
    return np.linalg.norm(weights, ord=order, axis=1)


def rank_filters(model, method="orthogonality", exclude_first=True,
                 layers=None):
    """Ranks the convolution filters of `model` for RePr, globally.

    For each conv layer the filters are flattened one per row and scored
    (see `orthogonality_scores`); all filters of all ranked layers are then
    sorted together, so one cut-off decides how many each layer loses.

    Args:
        model: A built Keras model: stock `Conv1D/2D/3D` layers and
            `keras_slim` slim layers (ranked at full width) alike.
        method: "orthogonality" (RePr: the most overlapping filters first),
            "l1" or "l2" (the smallest filters first: the paper's ablation).
        exclude_first: Leave out the model's first convolution.
        layers: Optional names of the conv layers to rank instead.

    Returns:
        A `FilterRanking`.

    Raises:
        ValueError: for an unknown method, a model without a convolution
            to rank, or a named layer that is not a rankable convolution.

    Example:

    >>> ranking = keras_slim.repr.rank_filters(model)
    >>> ranking.order[:3]          # the three most redundant filters
    [('conv3', 12), ('conv2', 5), ('conv3', 30)]
    >>> ranking.select(0.3)        # what a 30% drop removes, per layer

    Reference:
        Prakash, Storer, Florencio & Zhang, RePr: Improved Training of
        Convolutional Filters, CVPR 2019 (https://arxiv.org/abs/1811.07275).
    """
    check_method(method)
    convs = conv_layers(model, exclude_first=exclude_first, layers=layers)
    names = [layer.name for layer in convs]
    if len(set(names)) != len(names):
        raise ValueError(
            f"Layer names must be unique to rank filters; got {names}."
        )
    with single_threaded_blas():
        scores = {layer.name: score_layer(layer, method) for layer in convs}
    all_scores = np.concatenate([scores[name] for name in names])
    layer_index = np.concatenate(
        [np.full(len(scores[name]), i) for i, name in enumerate(names)]
    )
    filter_index = np.concatenate([np.arange(len(scores[n])) for n in names])
    key = -all_scores if method == "orthogonality" else all_scores
    # np.lexsort sorts by the last key first: score, then layer, then index.
    order = np.lexsort((filter_index, layer_index, key))
    return FilterRanking(
        method=method,
        layer_names=names,
        scores=scores,
        order=[(names[layer_index[i]], int(filter_index[i])) for i in order],
    )
