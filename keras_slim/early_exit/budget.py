"""Anytime and budgeted inference: exit thresholds for a MAC budget.

Budgeted batch classification as MSDNet (and BoostNet after it) evaluates
it. For `q = p / 20`, `p = 1..39`, the target share of samples leaving at
exit `k` (`k = 1..K`) is `q^k`, normalised to sum to 1. On a validation
split, for each exit `k < K` in turn, samples are sorted by confidence (max
softmax of the exit's ensemble logits) in descending order; counting only
samples that have not exited yet, when the count reaches
`floor(N * share_k)` the threshold `T_k` is that sample's confidence, and
every sample with confidence `>= T_k` exits at `k`. The last exit takes
everyone left. At test time a sample exits at the first `k` with confidence
`>= T_k`. The expected cost is `sum_k (n_k / N) * cost_k`, with `cost_k`
cumulative: every block up to exit `k` and every head up to and including
head `k`.

For a target budget, `calibrate_exit_thresholds` searches the same `q^k`
family (a fine grid of `q`, plus its limits "everyone at exit 1" and
"everyone at the last exit") and keeps the member with the best validation
accuracy whose expected cost is within the budget. Over several widths of a
slimmable early-exit network it chooses width and thresholds jointly.

Everything here works on cached validation logits (`exit_logits`), so a
whole budget curve costs no forward pass beyond the first.
"""

import contextlib
import dataclasses
import math
import numbers
import warnings

import numpy as np

from keras_slim.training.boosting import softmax_confidence

# MSDNet's threshold for "nobody exits here" (confidences are <= 1); public
# as `keras_slim.early_exit.NEVER_EXIT` (see the package docstring).
NEVER_EXIT = 1e8
# The budget curve of MSDNet's dynamic evaluation: q = p / 20, p = 1..39.
NUM_BUDGETS = 39
# q values searched for a target budget (the family's members are added).
_SEARCH_Q = np.geomspace(1e-3, 1e3, 241)


def q_family(num_budgets=NUM_BUDGETS):
    """The `q` values of MSDNet's budget curve: `p / 20`, `p = 1..39`."""
    return [p / 20 for p in range(1, int(num_budgets) + 1)]


def exit_shares(q, num_exits):
    """Target share of samples per exit: `q^k` normalised, `k = 1..K`."""
    k = np.arange(1, num_exits + 1, dtype="float64")
    shares = np.exp(np.log(float(q)) * k)
    return shares / shares.sum()


def thresholds_for_shares(confidences, shares, order=None):
    """MSDNet's thresholds for target exit shares on validation confidences.

    Args:
        confidences: `[K, N]` max-softmax confidences of every exit.
        shares: `K` target shares (only the first `K - 1` are used).
        order: Optional `[K, N]` indices sorting each exit's confidences in
            descending order (cached by `ExitLogits`).

    Returns:
        A list of `K - 1` thresholds (`NEVER_EXIT` where no sample exits).
    """
    confidences = np.asarray(confidences)
    num_exits, count = confidences.shape
    if order is None:
        order = np.argsort(-confidences, axis=1, kind="stable")
    exited = np.zeros(count, bool)
    thresholds = []
    for k in range(num_exits - 1):
        target = math.floor(count * float(shares[k]))
        threshold = NEVER_EXIT
        if target >= 1:
            remaining = np.cumsum(~exited[order[k]])
            position = int(np.searchsorted(remaining, target))
            if position < count:
                threshold = float(confidences[k, order[k][position]])
        thresholds.append(threshold)
        exited |= confidences[k] >= threshold
    return thresholds


def assign_exits(confidences, thresholds):
    """0-based exit of each sample: the first `k` with confidence >= T_k.

    Args:
        confidences: `[K, N]` confidences.
        thresholds: `K - 1` thresholds.

    Returns:
        An int array of length `N` (the last exit, `K - 1`, when no early
        exit is confident enough).
    """
    confidences = np.asarray(confidences)
    thresholds = np.asarray(thresholds, "float64").reshape(-1, 1)
    confident = confidences[:-1] >= thresholds
    first = np.argmax(confident, axis=0)
    return np.where(confident.any(axis=0), first,
                    confidences.shape[0] - 1).astype("int64")


def check_thresholds(thresholds, num_exits):
    """`(values, width)` from an `ExitPolicy` or a list of thresholds.

    Raises:
        ValueError: for a list of the wrong length or with non-numbers.
    """
    width = None
    if isinstance(thresholds, ExitPolicy):
        width = thresholds.width
        thresholds = thresholds.thresholds
    if isinstance(thresholds, np.ndarray):
        thresholds = thresholds.tolist()
    if not isinstance(thresholds, (list, tuple)):
        raise ValueError(
            "thresholds must be an ExitPolicy (from "
            "keras_slim.calibrate_exit_thresholds) or a list of "
            f"{num_exits - 1} numbers; got {type(thresholds).__name__}."
        )
    if len(thresholds) != num_exits - 1:
        raise ValueError(
            f"thresholds has {len(thresholds)} values; this model has "
            f"{num_exits} exits, so pass {num_exits - 1} (one per exit "
            "except the last, which takes every remaining sample)."
        )
    values = []
    for value in thresholds:
        if isinstance(value, bool) or not isinstance(
            value, (numbers.Real, np.floating)
        ) or math.isnan(value):
            raise ValueError(
                f"Every threshold must be a number; got {thresholds!r}."
            )
        values.append(float(value))
    return values, width


@contextlib.contextmanager
def at_width(model, width):
    """Runs a block at `width`, then restores the model's width."""
    if width is None:
        yield
        return
    previous = model.width
    model.set_width(width)
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.set_width(previous)


@dataclasses.dataclass
class ExitLogits:
    """Cached ensemble logits of every exit on a data set, at one width.

    Attributes:
        width: The width they were computed at.
        logits: `[K, N, classes]` float32 ensemble logits `P_k`.
        labels: `[N]` int labels, or None.
        cumulative_macs: `K` cumulative MACs per exit at `width`.

    Example:

    >>> cache = keras_slim.early_exit.exit_logits(model, (x_val, y_val))
    >>> cache.num_exits, cache.logits.shape
    (3, (3, 5000, 10))
    >>> cache.accuracy(np.full(5000, cache.num_exits - 1))  # all at the last
    0.9132
    >>> # From logits stored earlier (e.g. by another process):
    >>> cache = keras_slim.early_exit.ExitLogits(
    ...     width=1.0, logits=logits, labels=y_val,
    ...     cumulative_macs=model.exit_costs()["macs"])
    """

    width: object
    logits: np.ndarray
    labels: object
    cumulative_macs: list

    def __post_init__(self):
        num_samples, classes = self.logits.shape[1:]
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.shape != (num_samples,):
                raise ValueError(
                    f"Got {labels.size} labels for {num_samples} samples: "
                    "pass one integer label (or one-hot row) per sample."
                )
            bad = (labels < 0) | (labels >= classes)
            if bad.any():
                raise ValueError(
                    f"Labels must be class indices in [0, {classes}) (the "
                    f"exits predict {classes} classes); got "
                    f"{np.unique(labels[bad])[:5].tolist()} for "
                    f"{int(bad.sum())} sample(s)."
                )
        self.confidences, self.predictions = softmax_confidence(self.logits)
        self.order = np.argsort(-self.confidences, axis=1, kind="stable")

    @property
    def num_exits(self):
        return self.logits.shape[0]

    def accuracy(self, exits):
        """Accuracy when sample i is classified at 0-based exit `exits[i]`."""
        if self.labels is None:
            return None
        index = np.arange(len(exits))
        return float(np.mean(self.predictions[exits, index] == self.labels))


def _labels(y):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[-1] > 1:
        y = y.argmax(-1)  # one-hot
    y = y.reshape(-1)
    if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
        raise ValueError(
            "Labels must be integer class indices (or one-hot rows); got "
            f"fractional values such as {y[np.mod(y, 1) != 0][:3].tolist()}."
        )
    return y.astype("int64")


def _arrays(data):
    """`(x, y or None)` numpy arrays from arrays or a dataset of batches."""
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        return np.asarray(data[0]), _labels(data[1])
    if hasattr(data, "as_numpy_iterator"):  # tf.data.Dataset, iterated once
        xs, ys = [], []
        for batch in data.as_numpy_iterator():
            if isinstance(batch, (tuple, list)):
                xs.append(np.asarray(batch[0]))
                if len(batch) > 1:
                    ys.append(_labels(batch[1]))
            else:
                xs.append(np.asarray(batch))
        if not xs:
            raise ValueError("The data set yielded no batches.")
        return np.concatenate(xs), (np.concatenate(ys) if ys else None)
    if isinstance(data, np.ndarray):
        return data, None
    raise ValueError(
        "Pass data as (x, y) numpy arrays, a numpy array of inputs, or a "
        "tf.data.Dataset of (inputs, labels) batches; got "
        f"{type(data).__name__}."
    )


def exit_logits(model, data, widths=None, batch_size=256):
    """Runs the model once and caches every exit's ensemble logits.

    Args:
        model: A `keras_slim.EarlyExitModel`.
        data: `(x, y)` arrays, an array of inputs, or a `tf.data.Dataset`
            of `(x, y)` batches (iterated once).
        widths: A width, or a list of widths (slimmable networks; BN
            statistics are those `set_width` selects). Default: the current
            width.
        batch_size: Batch size of the forward passes.

    Returns:
        An `ExitLogits`, or a list of them for a list of widths.

    Example:

    >>> cache = keras_slim.early_exit.exit_logits(model, (x_val, y_val))
    >>> curve = keras_slim.calibrate_exit_thresholds(model, cache)
    """
    x, y = _arrays(data)
    if len(x) == 0:
        raise ValueError("The data set is empty.")
    single = not isinstance(widths, (list, tuple))
    plans = [widths] if single else list(widths)
    caches = []
    for width in plans:
        with at_width(model, width):
            outputs = model.predict(x, batch_size=batch_size, verbose=0)
            caches.append(ExitLogits(
                width=model.width,
                logits=np.stack([np.asarray(o, "float32") for o in outputs]),
                labels=y,
                cumulative_macs=model.exit_costs()["macs"],
            ))
    return caches[0] if single else caches


@dataclasses.dataclass
class ExitPolicy:
    """Per-exit confidence thresholds for budgeted inference, at one width.

    Attributes:
        thresholds: `K - 1` thresholds (exits 1..K-1; the last exit takes
            every remaining sample). `NEVER_EXIT` means nobody exits there.
        width: The width they were chosen for.
        expected_macs: Expected MACs per image on the calibration data.
        accuracy: Accuracy on the calibration data (None without labels).
        exit_shares: Fraction of calibration samples leaving at each exit.
        q: The `q` of the `q^k` family member (None for the limits "all at
            exit 1" and "all at the last exit").
        budget: The target budget it was chosen for, if any.
        macs_per_exit: Cumulative MACs of each exit at `width`.

    Example:

    >>> policy = keras_slim.calibrate_exit_thresholds(
    ...     model, (x_val, y_val), budget=20e6)
    >>> policy.thresholds, policy.expected_macs, policy.exit_shares
    >>> with open("policy.json", "w") as f:
    ...     json.dump(policy.to_dict(), f)
    >>> with open("policy.json") as f:
    ...     policy = keras_slim.early_exit.ExitPolicy.from_dict(json.load(f))
    >>> model.predict_dynamic(x_test, policy).labels
    """

    thresholds: list
    width: object
    expected_macs: float
    accuracy: object
    exit_shares: list
    q: object = None
    budget: object = None
    macs_per_exit: list = dataclasses.field(default_factory=list)

    def to_dict(self):
        """A JSON-serializable dict (see `from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        return cls(**values)


def evaluate_policy(cache, thresholds):
    """Accuracy, expected MACs and exit shares of thresholds on a cache.

    Args:
        cache: An `ExitLogits` (e.g. of a test split).
        thresholds: An `ExitPolicy` or `K - 1` numbers.

    Returns:
        A dict with "accuracy" (None without labels), "expected_macs" and
        "exit_shares".

    Example:

    >>> test = keras_slim.early_exit.exit_logits(model, (x_test, y_test))
    >>> keras_slim.early_exit.evaluate_policy(test, policy)["accuracy"]
    """
    values, _ = check_thresholds(thresholds, cache.num_exits)
    exits = assign_exits(cache.confidences, values)
    counts = np.bincount(exits, minlength=cache.num_exits) / len(exits)
    return {
        "accuracy": cache.accuracy(exits),
        "expected_macs": float(np.dot(counts, cache.cumulative_macs)),
        "exit_shares": [float(c) for c in counts],
    }


def _policy(cache, thresholds, q=None, budget=None):
    figures = evaluate_policy(cache, thresholds)
    return ExitPolicy(
        thresholds=[float(t) for t in thresholds],
        width=cache.width,
        expected_macs=figures["expected_macs"],
        accuracy=figures["accuracy"],
        exit_shares=figures["exit_shares"],
        q=None if q is None else float(q),
        budget=budget,
        macs_per_exit=list(cache.cumulative_macs),
    )


def policy_for_q(cache, q):
    """The `q^k` family member of one `q` on a cache (MSDNet's rule)."""
    shares = exit_shares(q, cache.num_exits)
    thresholds = thresholds_for_shares(cache.confidences, shares, cache.order)
    return _policy(cache, thresholds, q=q)


def last_exit_policy(cache):
    """Everyone runs to the last exit (the plain network at that width).

    The reference point of a budget curve: the accuracy and MACs of the
    network without early exiting, on the same cached logits.

    Args:
        cache: An `ExitLogits`.

    Returns:
        An `ExitPolicy` whose thresholds are all `NEVER_EXIT`.

    Example:

    >>> cache = keras_slim.early_exit.exit_logits(model, (x_val, y_val))
    >>> full = keras_slim.early_exit.last_exit_policy(cache)
    >>> full.exit_shares
    [0.0, 0.0, 1.0]
    >>> full.expected_macs == cache.cumulative_macs[-1]
    True
    """
    return _policy(cache, [NEVER_EXIT] * (cache.num_exits - 1))


def first_exit_policy(cache):
    """Everyone leaves at exit 1 (confidence is always >= 0)."""
    return _policy(cache, [0.0] * (cache.num_exits - 1))


def _candidates(cache):
    qs = sorted(set(_SEARCH_Q.tolist()) | set(q_family()))
    return (
        [first_exit_policy(cache)]
        + [policy_for_q(cache, q) for q in qs]
        + [last_exit_policy(cache)]
    )


def _check_budget(budget):
    if isinstance(budget, bool) or not isinstance(
        budget, (numbers.Real, np.floating, np.integer)
    ) or not math.isfinite(budget) or budget <= 0:
        raise ValueError(
            "A budget is a finite positive number of MACs per image; got "
            f"{budget!r}."
        )
    return float(budget)


def _best(candidates, budget, with_labels):
    within = [c for c in candidates if c.expected_macs <= budget * (1 + 1e-12)]
    if with_labels:
        return max(within, key=lambda c: (c.accuracy, -c.expected_macs))
    return max(within, key=lambda c: c.expected_macs)


def calibrate_exit_thresholds(model, val_data, budget=None, widths=None,
                              batch_size=256):
    """Chooses per-exit confidence thresholds on a validation split.

    With `budget=None`, returns MSDNet's budget curve: the `q^k` family for
    `q = p / 20`, `p = 1..39` (one `ExitPolicy` per `q` and width). With a
    budget (expected MACs per image), returns the policy with the best
    validation accuracy among those of the family (searched over a fine
    grid of `q` and its limits) whose expected cost is within the budget;
    with several `widths` of a slimmable early-exit network, width and
    thresholds are chosen jointly.

    Args:
        model: A `keras_slim.EarlyExitModel` (used for its MACs and to run
            `val_data`).
        val_data: Validation `(x, y)` arrays, a `tf.data.Dataset` of
            `(x, y)` batches, or cached logits from
            `keras_slim.early_exit.exit_logits` (an `ExitLogits` or a list
            of them, one per width).
        budget: None (the whole curve), a number, or a list of numbers
            (MACs per image).
        widths: Widths to choose from (default: the current width; ignored
            when `val_data` is cached logits, which carry their widths).
        batch_size: Batch size of the forward passes.

    Returns:
        An `ExitPolicy` for one budget, else a list of them.

    Raises:
        ValueError: for a budget outside the achievable range (the message
            gives the range), a non-positive budget, or a model without
            exits.

    Example:

    >>> curve = keras_slim.calibrate_exit_thresholds(model, (x_val, y_val))
    >>> [(p.expected_macs, p.accuracy) for p in curve]
    >>> policy = keras_slim.calibrate_exit_thresholds(
    ...     model, (x_val, y_val), budget=20e6, widths=[0.5, 0.75, 1.0])
    >>> model.predict_dynamic(x_test, policy).labels
    """
    # Duck-typed: this module is imported by the model's module.
    if not (hasattr(model, "exit_costs") and hasattr(model, "num_exits")):
        raise ValueError(
            "calibrate_exit_thresholds needs a keras_slim.EarlyExitModel "
            f"(a model with exits); got {type(model).__name__}. Add exits "
            "with keras_slim.add_exits(backbone, after=[...])."
        )
    if isinstance(val_data, ExitLogits):
        caches = [val_data]
    elif isinstance(val_data, (list, tuple)) and val_data and all(
        isinstance(c, ExitLogits) for c in val_data
    ):
        caches = list(val_data)
    else:
        plans = widths if isinstance(widths, (list, tuple)) else [widths]
        caches = exit_logits(model, val_data, list(plans), batch_size)
    if any(c.num_exits != model.num_exits for c in caches):
        raise ValueError(
            f"The cached logits have {caches[0].num_exits} exits; the model "
            f"has {model.num_exits}."
        )
    if budget is None:
        return [policy_for_q(c, q) for c in caches for q in q_family()]
    single = not isinstance(budget, (list, tuple, np.ndarray))
    budgets = [_check_budget(b) for b in ([budget] if single else budget)]
    low = min(c.cumulative_macs[0] for c in caches)
    high = max(c.cumulative_macs[-1] for c in caches)
    for value in budgets:
        if not low <= value <= high:
            widths_text = ", ".join(str(c.width) for c in caches)
            raise ValueError(
                f"Budget {value:.6g} MACs per image is outside the "
                f"achievable range [{low}, {high}] MACs ({low / 1e6:.3f}M "
                f"to {high / 1e6:.3f}M: every sample at exit 1 of the "
                "narrowest width to every sample at the last exit of the "
                f"widest) for width(s) {widths_text}."
            )
    with_labels = all(c.labels is not None for c in caches)
    candidates = [p for c in caches for p in _candidates(c)]
    chosen = []
    for value in budgets:
        best = dataclasses.replace(
            _best(candidates, value, with_labels), budget=value
        )
        chosen.append(best)
    return chosen[0] if single else chosen


def anytime_accuracy(cache):
    """Accuracy and cumulative MACs of every exit (anytime prediction).

    Args:
        cache: An `ExitLogits` with labels.

    Returns:
        A list of dicts ("exit" 1-based, "macs", "accuracy").

    Example:

    >>> cache = keras_slim.early_exit.exit_logits(model, (x_test, y_test))
    >>> [(row["exit"], row["accuracy"])
    ...  for row in keras_slim.early_exit.anytime_accuracy(cache)]
    [(1, 0.7312), (2, 0.8675), (3, 0.9121)]
    """
    if cache.labels is None:
        raise ValueError("Anytime accuracy needs labels.")
    return [
        {
            "exit": k + 1,
            "macs": int(cache.cumulative_macs[k]),
            "accuracy": float(np.mean(cache.predictions[k] == cache.labels)),
        }
        for k in range(cache.num_exits)
    ]
