"""Orthogonal re-initialisation of dropped filters (RePr).

New filters are drawn in the null space of the filters a layer kept, so
they look at what the layer does not see yet: random directions are
appended to the kept filters (and, when there is room, to the dropped
filters' previous values) and the whole matrix is orthogonalised by a QR
decomposition (Householder, so exact even when the kept filters are
linearly dependent). Their length is that of a filter freshly drawn from
the layer's kernel initializer.

When the null space of the kept filters is too small (the layer has about
as many filters as its fan-in, e.g. a 1x1 convolution that widens its
input), no set of new filters can be orthogonal to all kept ones. The
fallback takes the directions *closest* to orthogonal: the right singular
vectors of the kept filters with the smallest singular values (those that
minimise the kept filters' responses, `sum_i ||K u_i||²`), null-space
directions first. Beyond `fan_in` new filters (more dropped than the filter
length), the rest are random unit vectors.

Where the author's code differs (and this module follows the paper): it
takes a QR decomposition of the whole L2-normalised kernel, old filters
included, and copies the dropped filters' columns of `Q` back. A new filter
is then orthogonal only to the filters with a lower index (Gram-Schmidt
order), lies in the span of the layer's previous filters rather than
avoiding them, and has unit norm times a fixed gain whatever the layer's
initializer.
"""

import numpy as np

# How the directions of one layer were found.
KEPT_AND_PREVIOUS = "kept+previous"  # orthogonal to kept and old filters
KEPT = "kept"  # orthogonal to the kept filters only
CLOSEST = "closest"  # null space too small: closest to orthogonal


def _random(rng, shape):
    return rng.standard_normal(shape)


def _qr_complement(constraints, count, rng):
    """`count` orthonormal rows orthogonal to the rows of `constraints`."""
    dim = constraints.shape[1]
    stacked = np.concatenate(
        [constraints.T, _random(rng, (dim, count))], axis=1
    )
    q, _ = np.linalg.qr(stacked, mode="reduced")
    return q[:, constraints.shape[0]:].T


def _closest(kept, count, rng):
    """The `count` directions least seen by `kept` (SVD), see module doc."""
    dim = kept.shape[1]
    _, singular, vt = np.linalg.svd(kept, full_matrices=True)
    # vt rows follow decreasing singular values; rows past len(singular)
    # span the exact null space. Least seen first:
    directions = vt[::-1]
    take = min(count, dim)
    chosen = directions[:take]
    if count > dim:
        extra = _random(rng, (count - dim, dim))
        extra /= np.linalg.norm(extra, axis=1, keepdims=True)
        chosen = np.concatenate([chosen, extra])
    return chosen


def null_space_dimension(kept, tol=None):
    """Dimension of the space orthogonal to every row of `kept`."""
    kept = np.asarray(kept, "float64")
    dim = kept.shape[1]
    if kept.shape[0] == 0:
        return dim
    return dim - int(np.linalg.matrix_rank(kept, tol=tol))


def orthogonal_directions(kept, count, previous=None, rng=None):
    """Unit directions for `count` new filters, orthogonal to `kept`.

    Args:
        kept: `(k, fan_in)` array, the filters the layer keeps (one per
            row).
        count: How many new directions.
        previous: Optional `(count, fan_in)` values of the filters being
            replaced: the new directions also avoid them when the null
            space is large enough (`k + 2 * count <= fan_in`).
        rng: A `numpy.random.Generator` (default: a fresh unseeded one).

    Returns:
        `(directions, mode)`: a `(count, fan_in)` float64 array of unit
        rows, mutually orthogonal whenever `count <= fan_in`, and how they
        were found: `KEPT_AND_PREVIOUS`, `KEPT` (orthogonal to the kept
        filters, not to the previous ones: no room) or `CLOSEST` (the null
        space of the kept filters is smaller than `count`).

    Example:

    >>> kept = np.eye(4)[:2]            # filters along e0 and e1
    >>> new, mode = orthogonal_directions(kept, 2)
    >>> np.abs(new @ kept.T).max() < 1e-12, mode
    (True, 'kept')
    """
    kept = np.asarray(kept, "float64")
    rng = rng if rng is not None else np.random.default_rng()
    count = int(count)
    dim = kept.shape[1]
    if count <= 0:
        return np.zeros((0, dim)), KEPT
    if previous is not None:
        previous = np.asarray(previous, "float64").reshape(-1, dim)
        if kept.shape[0] + previous.shape[0] + count <= dim:
            constraints = np.concatenate([kept, previous])
            return _qr_complement(constraints, count, rng), KEPT_AND_PREVIOUS
    if kept.shape[0] + count <= dim:
        return _qr_complement(kept, count, rng), KEPT
    if null_space_dimension(kept) >= count:
        # Dependent kept filters leave a large enough null space even
        # though there are many of them: use it (SVD, exact).
        directions = _closest(kept, count, rng)
        mix, _ = np.linalg.qr(_random(rng, (count, count)))
        return mix @ directions, KEPT
    return _closest(kept, count, rng), CLOSEST


def max_abs_cosine(a, b):
    """Largest |cosine| between any row of `a` and any row of `b`.

    How far re-initialised filters are from orthogonal to the kept ones
    (0: orthogonal to every one of them). Rows are filters: a conv kernel
    reshaped to `(filters, fan_in)`. Empty inputs give 0.

    Example:

    >>> keras_slim.repr.max_abs_cosine([[1.0, 0.0]], [[1.0, 1.0], [0.0, 2.0]])
    0.7071067811865475
    >>> kernel = conv.kernel.numpy().reshape(-1, conv.filters).T
    >>> keras_slim.repr.max_abs_cosine(kernel[dropped], kernel[kept])
    """
    a = np.asarray(a, "float64")
    b = np.asarray(b, "float64")
    if a.size == 0 or b.size == 0:
        return 0.0
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-300)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-300)
    return float(np.max(np.abs(a @ b.T)))
