"""Distributed training with the trainers' loop, on CPU only.

Logical CPU devices must be configured before TensorFlow runs any op and a
MultiWorkerMirroredStrategy cluster needs one process per worker, so every
check runs in subprocesses (bounded by timeouts, loopback addresses only):

- MirroredStrategy over 2 logical CPUs: per-replica random widths on/off,
  BN moving statistics identical on both replicas, and the same weights as
  one device for the same global batch (synchronized BN).
- MultiWorkerMirroredStrategy with two local worker processes: trains, the
  chief alone writes checkpoints, a restart resumes.
"""

import json
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
# Shared with the trainer tests (expensive fixtures run once per session,
# also under pytest-xdist).
from test_trainers import checkpoint_values
from test_trainers import once_per_session
from test_trainers import subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds, per subprocess

# Two replicas in one process: widths drawn per replica, BN statistics.
REPLICA_SCRIPT = textwrap.dedent(
    """
    import json
    from trainers import distribute
    distribute.configure_cpu_devices(2)  # before any TensorFlow op

    import numpy as np
    import tensorflow as tf
    from keras_slim import data as data_lib
    from keras_slim import training
    from trainers import loop

    strategy = distribute.get_strategy("mirrored")
    result = {"replicas": strategy.num_replicas_in_sync}

    @tf.function
    def draw(step, per_replica):
        return strategy.run(lambda: tf.stack(training.sandwich_widths(
            (0.25, 1.0), 4, step, seed=0, per_replica=per_replica)[2:]))

    for per_replica in (True, False):
        values = strategy.experimental_local_results(
            draw(tf.constant(3, tf.int64), per_replica))
        result[f"sandwich_{per_replica}"] = [v.numpy().tolist()
                                             for v in values]

    train_ds, _, info = data_lib.load(
        "digits", batch_size=32, seed=0, drop_remainder=True)
    for per_replica in (True, False):
        config = loop.TrainConfig(
            model_kwargs='{"padding": "same", "n": 8}', batch_size=32,
            per_replica_widths=per_replica)
        with strategy.scope():
            model = loop.build_compiled_model(config, info, 44, 100)
        train_steps = loop.make_train_function(model, strategy)
        iterator = iter(strategy.experimental_distribute_dataset(
            train_ds.repeat()))
        train_steps(iterator, tf.constant(4))

        @tf.function
        def widths():
            return strategy.run(
                lambda: tf.stack(model.training_widths()[2:]))

        result[f"model_{per_replica}"] = [
            v.numpy().tolist()
            for v in strategy.experimental_local_results(widths())]
        # Each replica normalised its own half of every batch (no sync BN),
        # yet the moving statistics must not drift apart.
        gap = moved = 0.0
        for layer in model.bn_layers:
            for variable, start in ((layer.moving_mean, 0.0),
                                    (layer.moving_variance, 1.0)):
                first, second = [v.numpy() for v in variable.value.values]
                gap = max(gap, float(np.max(np.abs(first - second))))
                moved = max(moved, float(np.max(np.abs(first - start))))
        result[f"bn_gap_{per_replica}"] = gap
        result[f"bn_moved_{per_replica}"] = moved
    print(json.dumps(result))
    """
)

# Same global batch on 1 device and on 2 replicas (sync BN): same weights.
EQUIVALENCE_FLAGS = [
    "--method=us",
    "--model=lenet_3c1l",
    '--model_kwargs={"padding": "same", "n": 8}',
    "--batch_size=32",
    "--train_steps=6",
    "--steps_per_loop=3",
    "--checkpoint_every_steps=0",
    "--sync_bn",
    "--deterministic",
    "--seed=1",
    "--calibration_examples=32",
    "--verbose=0",
]

# A small multi-worker run (one width: the test is about the cluster).
MULTI_WORKER_FLAGS = [
    "--strategy=multi_worker",
    "--method=plain",
    "--model=lenet_3c1l",
    '--model_kwargs={"padding": "same", "n": 4}',
    "--batch_size=32",
    "--steps_per_loop=3",
    "--checkpoint_every_steps=3",
    "--calibration_examples=32",
    "--verbose=0",
    # Two workers and another test share 2 cores: a worker can be starved
    # for longer than TensorFlow's 10 s heartbeat (seen in CI).
    "--heartbeat_timeout=120",
]


def trainer(*args):
    return [sys.executable, "-m", "trainers.train", *args]


def run_all(commands, envs):
    """Runs processes concurrently; returns their CompletedProcess results."""
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for cmd, env in zip(commands, envs)
    ]
    results = []
    try:
        for proc, cmd in zip(procs, commands):
            out, err = proc.communicate(timeout=TIMEOUT)
            results.append(subprocess.CompletedProcess(
                cmd, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def free_ports(count):
    """Loopback ports free right now (bound to port 0, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """The replica script and the 1-device / 2-replica trainer runs."""
    result = once_per_session(tmp_path_factory, "mirrored", _mirrored_runs)
    result["root"] = pathlib.Path(result["root"])
    return result


def _mirrored_runs(root):
    env = subprocess_env()
    script, single, replicas = run_all(
        [
            [sys.executable, "-c", REPLICA_SCRIPT],
            trainer(f"--model_dir={root / 'single'}", *EQUIVALENCE_FLAGS),
            trainer(f"--model_dir={root / 'mirrored'}", "--strategy=mirrored",
                    "--num_cpu_devices=2", *EQUIVALENCE_FLAGS),
        ],
        [env] * 3,
    )
    for result in (script, single, replicas):
        assert result.returncode == 0, result.stderr[-3000:]
    return {
        "script": json.loads(script.stdout.strip().splitlines()[-1]),
        "root": str(root),
    }


def test_per_replica_widths_differ_only_when_asked(mirrored):
    result = mirrored["script"]
    assert result["replicas"] == 2
    for source in ("sandwich", "model"):
        on, off = result[f"{source}_True"], result[f"{source}_False"]
        assert len(on) == len(off) == 2 and len(on[0]) == 2
        assert on[0] != on[1], source  # each replica drew its own widths
        assert off[0] == off[1], source  # one draw shared by both
        assert all(0.25 <= w <= 1.0 for w in on[0] + on[1] + off[0])


def test_bn_moving_statistics_stay_identical_across_replicas(mirrored):
    result = mirrored["script"]
    for per_replica in (True, False):
        assert result[f"bn_moved_{per_replica}"] > 1e-3  # they did update
        assert result[f"bn_gap_{per_replica}"] == 0.0


def test_two_replicas_train_like_one_device(mirrored):
    root = mirrored["root"]
    single = checkpoint_values(root / "single" / "ckpt-6")
    replicas = checkpoint_values(root / "mirrored" / "ckpt-6")
    assert sorted(single) == sorted(replicas)
    report = json.loads((root / "mirrored" / "report.json").read_text())
    assert report["num_replicas"] == 2
    worst = max(
        float(np.max(np.abs(single[k].astype("float64")
                            - replicas[k].astype("float64"))))
        for k in single
    )
    assert worst <= 1e-5, worst
    # ... and training did happen: 6 steps, non-zero momentum buffers.
    assert [int(v) for k, v in single.items() if "iteration" in k] == [6]
    momenta = [v for k, v in single.items()
               if k.startswith("optimizer/_variables/")]
    assert momenta and all(np.any(v != 0) for v in momenta)


def run_cluster(tmp_path, model_dir, *flags):
    """Runs the trainer as 2 workers on 127.0.0.1; returns their results.

    Each worker gets its own TMPDIR under `tmp_path` (non-chief workers
    write their checkpoint copies there)."""
    scratch = [tmp_path / "tmp0", tmp_path / "tmp1"]
    for path in scratch:
        path.mkdir(exist_ok=True)
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    envs = [
        subprocess_env(
            TF_CONFIG=json.dumps({
                "cluster": {"worker": workers},
                "task": {"type": "worker", "index": index},
            }),
            TMPDIR=str(scratch[index]),
        )
        for index in range(2)
    ]
    command = trainer(f"--model_dir={model_dir}", *flags)
    results = run_all([command, command], envs)
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    return results


def test_multi_worker_trains_chief_checkpoints_and_restart_resumes(tmp_path):
    model_dir = tmp_path / "model"
    scratch = tmp_path / "tmp1"

    def cluster_run(train_steps):
        return run_cluster(tmp_path, model_dir, f"--train_steps={train_steps}",
                           *MULTI_WORKER_FLAGS)

    cluster_run(train_steps=6)
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-6")
    assert (model_dir / "report.json").exists()
    # Only the chief (worker 0) wrote to model_dir (including the final
    # model.keras); the other worker's checkpoint copies went to its own
    # temporary directory, now removed.
    names = {p.name for p in model_dir.iterdir()}
    assert {n for n in names if not n.startswith("ckpt-")} == {
        "checkpoint", "run_config.json", "report.json", "model.keras",
        "train", "eval"}
    assert len(list((model_dir / "train").glob("events.out.*"))) == 1
    assert list(scratch.iterdir()) == []

    results = cluster_run(train_steps=9)
    for result in results:
        assert "Resumed from step 6" in result.stderr
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-9")
    step = checkpoint_values(model_dir / "ckpt-9")
    iterations = [v for k, v in step.items() if "iteration" in k]
    assert [int(v) for v in iterations] == [9]
    assert list(scratch.iterdir()) == []


def test_multi_worker_sync_bn_with_random_widths_runs_several_steps_per_call(
    tmp_path,
):
    # Synchronized BN all-reduces statistics whose length follows the
    # step's random width; the collective must still run several steps
    # (each its own width) inside one tf.function call.
    model_dir = tmp_path / "model"
    flags = [f for f in MULTI_WORKER_FLAGS if not f.startswith("--method")]
    results = run_cluster(tmp_path, model_dir, "--method=us", "--sync_bn",
                          "--train_steps=6", *flags)
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-6")
    report = json.loads((model_dir / "report.json").read_text())
    assert report["num_replicas"] == 2
    values = checkpoint_values(model_dir / "ckpt-6")
    means = [v for k, v in values.items() if "moving_mean" in k]
    assert means and all(np.all(np.isfinite(v)) for v in means)
    assert any(np.any(v != 0) for v in means)
    for result in results:
        assert "one step per" not in result.stderr
        # --heartbeat_timeout configured the service before TensorFlow
        # started (TensorFlow warns when it is too late to take effect).
        assert "may not be effective" not in result.stderr
