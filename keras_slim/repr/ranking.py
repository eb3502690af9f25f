"""Filter ranking for RePr: which convolution filters are most redundant.

RePr (Prakash et al., CVPR 2019) measures a filter's redundancy by its
overlap with the other filters of its layer. For a convolution with `N`
filters, `W` holds one flattened filter per row, each row scaled to unit L2
norm; `P = |W Wᵀ − I|`; the paper scores a filter by the sum of its row of
`P` divided by `N`, and sorts the filters of every ranked layer together
(one global cut-off), highest score first. The first convolution is
excluded by default, as in the author's code.

Why the default differs from the paper (`normalization="chance"`): the
paper's score is not comparable across layers. For filters that have
nothing to do with each other (independent random directions) the expected
`|cos|` of two filters of length `d = fan_in` is

    E_d = Γ(d / 2) / (√π · Γ((d + 1) / 2))  ≈  sqrt(2 / (π d)),

0.20 at `d = 16`, 0.067 at `d = 144`, 0.033 at `d = 576`: a global
cut-off on the paper's score takes filters by fan-in, whatever they
learned (on ResNet-20 it took 15 of 16 filters of the first stage and 0-4
of 64 of the last). The default score (`normalization="chance"`) says how
far a filter's mean `|cos|` to the other `N - 1` filters lies above `E_d`,
in standard errors of that mean for unrelated filters,
`(mean - E_d) / sqrt((1 / d - E_d²) / (N - 1))`: about 0 (spread about
1) for random filters of any fan-in and layer size, negative for filters
more orthogonal than chance, large for near-duplicates. One cut-off then
compares what the layers learned, and a larger layer's evidence counts
for more. `normalization="ratio"` divides the mean by `E_d` instead (1 for
random filters, 0 orthogonal to all others, `1 / E_d` a duplicate), which
ignores how many filters the mean is over. `normalization="paper"` keeps
the paper's exact formula.

Layers whose filters outnumber their fan-in (`N > d`, e.g. the 1x1
projection shortcuts of a ResNet, or a 1x1 convolution that widens its
input) can never have orthogonal filters, and re-initialising a filter
orthogonally to the kept ones is impossible there: they are not ranked by
default (`skip_overcomplete=True`) and `FilterRanking.skipped` says so.

`FilterRanking.select` also takes a per-layer ceiling
(`max_drop_per_layer`): no layer loses more than that share of its
filters, whatever the global order says (and never all but `min_kept`).

Where the author's code differs (and this module follows the paper for
`normalization="paper"`): it normalises the whole kernel tensor by one
norm instead of each filter, and scores a filter by the absolute mean of
its signed off-diagonal entries rather than the sum of their absolute
values.
"""

import contextlib
import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

METHODS = ("orthogonality", "l1", "l2")
NORMALIZATIONS = ("chance", "paper", "ratio")

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


_OTHER_CONVS = (
    keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D, keras.layers.SeparableConv2D,
    keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
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
    if isinstance(layers, str):
        raise ValueError(
            f"`layers` must be a list of layer names; got the string "
            f"{layers!r} (for one layer: layers=[{layers!r}])."
        )
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


def chance_overlap(fan_in):
    """Expected `|cos|` between two independent random filters of length
    `fan_in`: `Γ(d/2) / (√π Γ((d+1)/2))`, about `sqrt(2 / (π d))`.

    Example:

    >>> round(chance_overlap(16), 4), round(chance_overlap(576), 4)
    (0.2026, 0.0333)
    """
    d = int(fan_in)
    if d < 1:
        raise ValueError(f"fan_in must be >= 1; got {fan_in!r}.")
    return math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / (
        math.sqrt(math.pi))


def orthogonality_scores(weights, normalization="paper"):
    """RePr's inter-filter orthogonality score of each row of `weights`.

    Rows are scaled to unit L2 norm and `P = |W Wᵀ − I|` (its diagonal,
    zero for unit rows, is left out exactly).

    - `normalization="paper"`: row `i` scores `sum_j P[i, j] / N` (the
      paper's formula), in [0, 1). A row of zeros scores
      `DEAD_FILTER_SCORE` (1.0), above any real filter.
    - `normalization="chance"`: row `i`'s mean overlap with the other
      rows, `m_i = sum_j P[i, j] / (N - 1)`, in standard errors above that
      of independent random rows of the same length,
      `(m_i - E) / sqrt((1 / fan_in - E²) / (N - 1))` with
      `E = chance_overlap(fan_in)`: about 0 (spread about 1) for unrelated
      filters whatever the fan-in and `N`, large for near-duplicates. A
      row of zeros scores as a duplicate.
    - `normalization="ratio"`: `m_i / E`: about 1 for unrelated filters,
      0 for a filter orthogonal to all others, `1 / E` for a duplicate.

    Args:
        weights: `(N, fan_in)` array, one filter per row.
        normalization: "paper", "chance" or "ratio" (see the module doc
            for why `rank_filters` uses "chance" by default).

    Returns:
        A float64 array of `N` scores; higher is more redundant.

    Example:

    >>> orthogonality_scores(np.eye(3))
    array([0., 0., 0.])
    """
    check_normalization(normalization)
    weights = np.asarray(weights, "float64")
    count, fan_in = weights.shape
    norms = np.linalg.norm(weights, axis=1)
    dead = norms <= np.finfo("float64").tiny
    unit = weights / np.where(dead, 1.0, norms)[:, None]
    unit[dead] = 0.0
    overlap = np.abs(unit @ unit.T)
    np.fill_diagonal(overlap, 0.0)
    if normalization == "paper":
        scores = overlap.sum(axis=1) / count
        scores[dead] = DEAD_FILTER_SCORE
        return scores
    chance = chance_overlap(fan_in)
    if count < 2:
        return np.where(dead, 1.0 / chance, 0.0)
    mean = overlap.sum(axis=1) / (count - 1)
    if normalization == "ratio":
        scores = mean / chance
        scores[dead] = 1.0 / chance
        return scores
    spread = math.sqrt(max(1.0 / fan_in - chance**2, 1e-300) / (count - 1))
    scores = (mean - chance) / spread
    scores[dead] = (1.0 - chance) / spread
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
        normalization: "chance" or "paper" for the orthogonality ranking
            (see `orthogonality_scores`), None for the norms.
        fan_in: dict layer name -> length of its flattened filters.
        skipped: dict layer name -> why a convolution was not ranked
            (e.g. more filters than fan-in).

    Example:

    >>> ranking = rank_filters(model)
    >>> print(ranking.summary(0.3, max_drop_per_layer=0.5))
    """

    method: str
    layer_names: list
    scores: dict
    order: list
    normalization: object = None
    fan_in: dict = dataclasses.field(default_factory=dict)
    skipped: dict = dataclasses.field(default_factory=dict)

    def __len__(self):
        return len(self.order)

    def select(self, fraction, min_kept=1, cutoff="global",
               max_drop_per_layer=None):
        """The filters a cut-off at `fraction` drops.

        Args:
            fraction: Share of the ranked filters to drop, in (0, 1).
            min_kept: Filters every layer keeps whatever the ranking says
                (a layer without any filter would cut the network).
            cutoff: "global" (the paper): `round(fraction * total)` filters
                (at least one), the first of `order`, wherever they are.
                "per_layer": `round(fraction * N)` of each layer's `N`
                filters, its most redundant ones. With the paper's score
                a global cut-off takes far more from layers with a small
                fan-in (see the module doc); the default chance-relative
                score does not need "per_layer" for that.
            max_drop_per_layer: Optional ceiling, in (0, 1): no layer
                loses more than `floor(max_drop_per_layer * N)` filters (a
                global cut-off then takes the next filters of `order`
                from other layers instead).

        Returns:
            dict layer name -> sorted int array of dropped filter indices
            (layers with nothing dropped are left out).

        Example:

        >>> ranking.select(0.3)
        {'conv2': array([ 1,  7, 19]), 'conv3': array([4, 5])}
        """
        fraction = check_fraction(fraction)
        check_cutoff(cutoff)
        check_ceiling(max_drop_per_layer)
        sizes = {name: len(s) for name, s in self.scores.items()}
        ceiling = {
            name: size if max_drop_per_layer is None
            else int(np.floor(max_drop_per_layer * size + 1e-9))
            for name, size in sizes.items()
        }
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
            if (budget[key] == 0 or remaining[name] <= min_kept
                    or len(dropped[name]) >= ceiling[name]):
                continue
            dropped[name].append(index)
            remaining[name] -= 1
            budget[key] -= 1
        return {
            name: np.asarray(sorted(indices), "int64")
            for name, indices in dropped.items()
            if indices
        }

    def summary(self, fraction=None, min_kept=1, cutoff="global",
                max_drop_per_layer=None):
        """A table of the ranked layers, one row each (a string).

        Columns: filters, fan-in, the mean / min / max score and, when
        `fraction` is given, how many filters `select(fraction, ...)`
        drops from the layer. Skipped layers are listed with the reason.

        Example:

        >>> print(ranking.summary(0.3, max_drop_per_layer=0.5))
        RePr ranking: orthogonality (chance)
        layer  filters  fan-in    mean     min     max  dropped
        conv2       32     800  -0.422  -1.705   1.102    5 (16%)
        conv3       32     800   0.291  -1.535   1.919   14 (44%)
        dropped 19 of 64 ranked filters (global cut-off at 0.3, ...)
        dw     not ranked: it is a depthwise convolution: ...
        """
        selection = {}
        if fraction is not None:
            selection = self.select(fraction, min_kept, cutoff,
                                    max_drop_per_layer)
        width = max([len("layer")] + [len(n) for n in self.layer_names]
                    + [len(n) for n in self.skipped])
        header = (f"{'layer':<{width}}  filters  fan-in  {'mean':>6}  "
                  f"{'min':>6}  {'max':>6}")
        if fraction is not None:
            header += "  dropped"
        lines = [
            f"RePr ranking: {self.method}"
            + (f" ({self.normalization})" if self.normalization else ""),
            header,
        ]
        total_dropped = 0
        for name in self.layer_names:
            scores = self.scores[name]
            line = (f"{name:<{width}}  {len(scores):7d}  "
                    f"{self.fan_in.get(name, 0):6d}  {np.mean(scores):6.3f}  "
                    f"{np.min(scores):6.3f}  {np.max(scores):6.3f}")
            if fraction is not None:
                count = len(selection.get(name, ()))
                total_dropped += count
                line += f"  {count:3d} ({count / len(scores):.0%})"
            lines.append(line)
        if fraction is not None:
            lines.append(
                f"dropped {total_dropped} of {len(self.order)} ranked filters"
                f" ({cutoff} cut-off at {fraction:g}"
                + (f", at most {max_drop_per_layer:g} of a layer"
                   if max_drop_per_layer is not None else "") + ")")
        for name, reason in self.skipped.items():
            lines.append(f"{name:<{width}}  not ranked: {reason}")
        return "\n".join(lines)


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


def check_ceiling(ceiling):
    """Validates `max_drop_per_layer`: None or a number in (0, 1)."""
    if ceiling is None:
        return None
    if isinstance(ceiling, bool) or not isinstance(
        ceiling, (int, float, np.floating, np.integer)
    ) or not 0.0 < float(ceiling) < 1.0:
        raise ValueError(
            "max_drop_per_layer must be None or a number strictly between "
            "0 and 1 (the largest share of one layer's filters dropped at "
            f"once); got {ceiling!r}."
        )
    return float(ceiling)


def check_method(method):
    if method not in METHODS:
        raise ValueError(
            f"Unknown ranking method {method!r}; expected one of "
            f"{', '.join(repr(m) for m in METHODS)}."
        )
    return method


def check_normalization(normalization):
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"Unknown normalization {normalization!r}; expected 'chance' "
            "(overlap above that of random filters of the same fan-in, in "
            "standard errors; the default), 'ratio' (overlap divided by "
            "that of random filters) or 'paper' (the paper's sum over N)."
        )
    return normalization


def fan_in(layer):
    """Length of a conv layer's flattened filters (kernel size x input
    channels)."""
    return int(np.prod(layer.kernel.shape[:-1]))


def is_overcomplete(layer):
    """Whether a conv layer has more filters than its fan-in: they can
    never all be orthogonal."""
    return int(layer.kernel.shape[-1]) > fan_in(layer)


def score_layer(layer, method, normalization="paper"):
    """Scores of one conv layer's filters (see `FilterRanking.scores`)."""
    weights = filter_matrix(layer)
    if method == "orthogonality":
        return orthogonality_scores(weights, normalization)
    order = 1 if method == "l1" else 2
    return np.linalg.norm(weights, ord=order, axis=1)


def rankable_layers(model, exclude_first=True, layers=None,
                    skip_overcomplete=True):
    """`(convs, skipped)`: the convolutions RePr ranks and, by name, the
    ones it leaves out and why (see `conv_layers`, `rank_filters`)."""
    convs = conv_layers(model, exclude_first=exclude_first, layers=layers)
    skipped = {}
    if layers is None:
        # Convolutions of other kinds are not ranked: say so, with why.
        for layer in ordered_layers(model):
            if not is_conv(layer) and isinstance(layer, _OTHER_CONVS):
                skipped[layer.name] = _why_not_rankable(layer)
    overcomplete = []
    if skip_overcomplete:
        for layer in convs:
            if is_overcomplete(layer):
                overcomplete.append(layer.name)
                skipped[layer.name] = (
                    f"{layer.kernel.shape[-1]} filters for a fan-in of "
                    f"{fan_in(layer)}: they can never all be orthogonal "
                    "(skip_overcomplete=False ranks it anyway)"
                )
        convs = [layer for layer in convs if layer.name not in skipped]
        if not convs:
            raise ValueError(
                f"Every convolution RePr could rank in model '{model.name}' "
                "has more filters than its fan-in "
                f"({', '.join(overcomplete)}): pass skip_overcomplete=False to "
                "rank them anyway."
            )
    return convs, skipped


def rank_filters(model, method="orthogonality", exclude_first=True,
                 layers=None, normalization="chance",
                 skip_overcomplete=True):
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
        normalization: For "orthogonality": "chance" (default; each
            filter's overlap above that of random filters of its layer's
            fan-in, in standard errors, so layers compare fairly),
            "ratio" (the overlap divided by that of random filters) or
            "paper" (the paper's exact score, which ranks layers by
            fan-in; see the module doc).
        skip_overcomplete: Leave out layers with more filters than fan-in
            (listed in `FilterRanking.skipped`).

    Returns:
        A `FilterRanking`.

    Raises:
        ValueError: for an unknown method or normalization, a model
            without a convolution to rank, or a named layer that is not a
            rankable convolution.

    Example:

    >>> ranking = keras_slim.repr.rank_filters(model)
    >>> ranking.order[:3]          # the three most redundant filters
    [('conv3', 12), ('conv2', 5), ('conv3', 30)]
    >>> ranking.select(0.3, max_drop_per_layer=0.5)   # what a drop removes
    >>> print(ranking.summary(0.3))                   # per-layer counts

    Reference:
        Prakash, Storer, Florencio & Zhang, RePr: Improved Training of
        Convolutional Filters, CVPR 2019 (https://arxiv.org/abs/1811.07275).
    """
    check_method(method)
    check_normalization(normalization)
    convs, skipped = rankable_layers(model, exclude_first, layers,
                                     skip_overcomplete)
    names = [layer.name for layer in convs]
    if len(set(names)) != len(names):
        raise ValueError(
            f"Layer names must be unique to rank filters; got {names}."
        )
    with single_threaded_blas():
        scores = {layer.name: score_layer(layer, method, normalization)
                  for layer in convs}
    all_scores = np.concatenate([scores[name] for name in names])
    layer_index = np.concatenate(
        [np.full(len(scores[name]), i) for i, name in enumerate(names)]
    )
    filter_index = np.concatenate([np.arange(len(scores[n])) for n in names])
    key = -all_scores if method == "orthogonality" else all_scores
    # Dead (all-zero) filters go first in every ranking: they compute
    # nothing, whatever their score says relative to other layers.
    dead = np.concatenate([
        np.linalg.norm(filter_matrix(layer), axis=1) == 0 for layer in convs
    ])
    # np.lexsort sorts by the last key first: dead, score, layer, index.
    order = np.lexsort((filter_index, layer_index, key, ~dead))
    return FilterRanking(
        method=method,
        layer_names=names,
        scores=scores,
        order=[(names[layer_index[i]], int(filter_index[i])) for i in order],
        normalization=normalization if method == "orthogonality" else None,
        fan_in={layer.name: fan_in(layer) for layer in convs},
        skipped=skipped,
    )
