"""Budgeted inference: MSDNet's thresholds, budgets, predict_dynamic, plot."""

import math

import keras
import numpy as np
import pytest

import keras_slim
from keras_slim import early_exit
from keras_slim.early_exit import ExitLogits
from keras_slim.early_exit import budget as budget_lib
from keras_slim.training.boosting import softmax_confidence
from tests.early_exit_testing import early_exit_model
from tests.testing import digits


def reference_thresholds(confidences, shares):
    """MSDNet's threshold search written as the plain loop it describes."""
    num_exits, count = confidences.shape
    exited = np.zeros(count, bool)
    thresholds = []
    for k in range(num_exits - 1):
        target = math.floor(count * shares[k])
        threshold = early_exit.NEVER_EXIT
        seen = 0
        for i in sorted(range(count), key=lambda i: -confidences[k, i]):
            if not exited[i]:
                seen += 1
                if seen == target:
                    threshold = confidences[k, i]
                    break
        thresholds.append(threshold)
        exited |= confidences[k] >= threshold
    return thresholds


def reference_cost(confidences, thresholds, costs):
    total = 0.0
    for i in range(confidences.shape[1]):
        for k in range(confidences.shape[0]):
            if k == confidences.shape[0] - 1 or (
                confidences[k, i] >= thresholds[k]
            ):
                total += costs[k]
                break
    return total / confidences.shape[1]


def synthetic_cache(num_exits=3, count=300, seed=0, costs=(10, 25, 60)):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count)
    logits = rng.normal(size=(num_exits, count, 10)).astype("float32")
    for k in range(num_exits):  # later exits are more often right
        right = rng.random(count) < 0.3 + 0.25 * k
        logits[k, right, labels[right]] += 2.0 + k
    logits[:, :20] = np.round(logits[:, :20])  # some tied confidences
    return ExitLogits(width=1.0, logits=logits, labels=labels,
                      cumulative_macs=list(costs))


def test_exit_shares_are_q_powers():
    shares = budget_lib.exit_shares(0.5, 4)
    assert shares.sum() == pytest.approx(1.0)
    assert np.allclose(shares[1:] / shares[:-1], 0.5)
    assert budget_lib.q_family() == [p / 20 for p in range(1, 40)]


def test_thresholds_follow_msdnet_rule_on_the_whole_curve():
    cache = synthetic_cache()
    for q in budget_lib.q_family():
        shares = budget_lib.exit_shares(q, 3)
        thresholds = budget_lib.thresholds_for_shares(
            cache.confidences, shares, cache.order)
        assert thresholds == reference_thresholds(cache.confidences, shares)
        policy = budget_lib.policy_for_q(cache, q)
        assert policy.thresholds == thresholds
        assert policy.expected_macs == pytest.approx(reference_cost(
            cache.confidences, thresholds, cache.cumulative_macs))
        exits = budget_lib.assign_exits(cache.confidences, thresholds)
        assert policy.accuracy == pytest.approx(np.mean(
            cache.predictions[exits, np.arange(300)] == cache.labels))
        # MSDNet's counts: exit k takes floor(N * share_k) samples, or more
        # with ties at the threshold.
        for k in range(2):
            target = math.floor(300 * shares[k])
            assert np.sum(exits == k) >= target or (
                thresholds[k] == early_exit.NEVER_EXIT)


def test_budgets_choose_the_best_policy_within_the_budget():
    model = early_exit_model()
    cache = synthetic_cache()
    curve = keras_slim.calibrate_exit_thresholds(model, cache)
    assert len(curve) == 39 and all(p.width == 1.0 for p in curve)
    for budget in (12.0, 30.0, 45.0, 60.0):
        policy = keras_slim.calibrate_exit_thresholds(model, cache,
                                                      budget=budget)
        assert policy.expected_macs <= budget and policy.budget == budget
        within = [p for p in curve if p.expected_macs <= budget]
        assert all(policy.accuracy >= p.accuracy for p in within)
    assert keras_slim.calibrate_exit_thresholds(
        model, cache, budget=60.0).exit_shares[-1] > 0
    assert keras_slim.calibrate_exit_thresholds(
        model, cache, budget=10.0).exit_shares == [1.0, 0.0, 0.0]
    policies = keras_slim.calibrate_exit_thresholds(model, cache,
                                                    budget=[20, 40])
    assert [p.budget for p in policies] == [20, 40]
    with pytest.raises(ValueError, match=r"achievable range \[10, 60\]"):
        keras_slim.calibrate_exit_thresholds(model, cache, budget=61)
    with pytest.raises(ValueError, match=r"achievable range \[10, 60\]"):
        keras_slim.calibrate_exit_thresholds(model, cache, budget=5)
    with pytest.raises(ValueError, match="finite positive number"):
        keras_slim.calibrate_exit_thresholds(model, cache, budget=-1)
    with pytest.raises(ValueError, match="model with exits"):
        keras_slim.calibrate_exit_thresholds(keras.Sequential(), cache)


def test_joint_width_and_threshold_choice():
    model = early_exit_model()
    wide = synthetic_cache(seed=1, costs=(10, 25, 60))
    narrow = synthetic_cache(seed=2, costs=(3, 8, 20))
    narrow.width = 0.5
    # Below the wide net's first exit only the narrow width fits.
    policy = keras_slim.calibrate_exit_thresholds(model, [wide, narrow],
                                                  budget=9)
    assert policy.width == 0.5 and policy.expected_macs <= 9
    policy = keras_slim.calibrate_exit_thresholds(model, [wide, narrow],
                                                  budget=50)
    candidates = keras_slim.calibrate_exit_thresholds(model, [wide, narrow])
    assert len(candidates) == 78
    assert all(policy.accuracy >= p.accuracy for p in candidates
               if p.expected_macs <= 50)
    with pytest.raises(ValueError, match=r"range \[3, 60\]"):
        keras_slim.calibrate_exit_thresholds(model, [wide, narrow], budget=2)


def test_predict_dynamic_follows_thresholds_and_policies():
    x, y = digits(400)
    model = early_exit_model()
    model.compile("adam", metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    outputs = model.predict(x, verbose=0)
    confidences, predicted = softmax_confidence(np.stack(outputs))
    thresholds = [float(np.median(confidences[0])),
                  float(np.median(confidences[1]))]
    result = model.predict_dynamic(x, thresholds)
    costs = [e["macs"] for e in model.exits]
    for i in range(len(x)):
        k = next((k for k in range(2) if confidences[k, i] >= thresholds[k]),
                 2)
        assert result.exits[i] == k + 1
        assert result.labels[i] == predicted[k, i]
        assert result.macs[i] == costs[k]
    assert set(np.unique(result.exits)) == {1, 2, 3}
    # On the calibration data, a policy's figures are reproduced exactly.
    policy = keras_slim.calibrate_exit_thresholds(
        model, (x, y), budget=0.5 * (costs[0] + costs[-1]))
    dynamic = model.predict_dynamic(x, policy)
    assert dynamic.mean_macs == pytest.approx(policy.expected_macs)
    assert np.mean(dynamic.labels == y) == pytest.approx(policy.accuracy)
    with pytest.raises(ValueError, match="pass 2 \\(one per exit except"):
        model.predict_dynamic(x, [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="must be a number"):
        model.predict_dynamic(x, [0.5, "high"])
    anytime = early_exit.anytime_accuracy(early_exit.exit_logits(model,
                                                                 (x, y)))
    assert [a["macs"] for a in anytime] == costs
    assert anytime[2]["accuracy"] == pytest.approx(
        np.mean(outputs[2].argmax(-1) == y))


def test_budget_curve_png(tmp_path):
    cache = synthetic_cache()
    model = early_exit_model()
    curve = keras_slim.calibrate_exit_thresholds(model, cache)
    path = tmp_path / "budget.png"
    early_exit.plot_budget_curve(
        path, {"boosted": curve},
        anytime={"exits": early_exit.anytime_accuracy(cache)},
        title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.full(300, 10), r"class indices in \[0, 10\).*\[10\] for 300"),
        (np.full(300, -1), r"class indices in \[0, 10\)"),
        (np.zeros(299, "int64"), r"Got 299 labels for 300 samples"),
    ],
)
def test_labels_outside_the_classes_or_of_another_length_are_refused(
        labels, message):
    # Labels of 10 used to give accuracy 0 with every sample at exit 1; a
    # wrong length, a numpy broadcast error.
    cache = synthetic_cache()
    with pytest.raises(ValueError, match=message):
        ExitLogits(width=1.0, logits=cache.logits, labels=labels,
                   cumulative_macs=cache.cumulative_macs)


def test_calibrate_exit_thresholds_refuses_bad_labels():
    model = early_exit_model()
    x, _ = digits(40)
    for labels, message in ((np.full(40, 10), r"\[0, 10\)"),
                            (np.zeros(30), "Got 30 labels for 40"),
                            (np.full(40, 0.5), "integer class indices")):
        with pytest.raises(ValueError, match=message):
            keras_slim.calibrate_exit_thresholds(model, (x, labels))


def test_budget_curve_leaves_the_pyplot_backend_alone(tmp_path):
    # plot_budget_curve switched matplotlib to Agg, which silently blanked
    # every later plt.show() of a notebook.
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a notebook's inline backend, say: not Agg
    try:
        early_exit.plot_budget_curve(tmp_path / "curve.png",
                                     {"boosted": [(1e6, 0.5), (2e6, 0.7)]})
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert (tmp_path / "curve.png").stat().st_size > 0
