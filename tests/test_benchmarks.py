"""The benchmark harness: a smoke run of real suites, records, reports.

Runs `python -m benchmarks` as a user would, on the two suites that have
`--smoke` settings (tiny, no CIFAR-10 archive needed), then checks every
record against the schema and generates a README section from them.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks import harness
from benchmarks import report
from benchmarks import suites

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "benchmarks", *args],
                          cwd=REPO, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    done = _run("--suite", "core_speed,early_exit_speed", "--smoke",
                "--out", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out, done.stdout


def test_smoke_run_writes_valid_records_reports_and_plots(smoke_run):
    out, stdout = smoke_run
    assert "2 of 2 suites ok" in stdout
    for name in ("core_speed", "early_exit_speed"):
        record = json.loads((out / f"{name}.json").read_text())
        harness.validate(record)
        assert record["status"] == "ok" and record["mode"] == "smoke"
        assert record["command"].startswith(
            "python -m benchmarks --suite core_speed,early_exit_speed "
            "--smoke")
        assert record["versions"]["tensorflow"] and record["machine"]["cpus"]
        assert record["seconds"] > 0
        text = (out / record["report"]).read_text()
        assert record["module_command"] in text
        for figure in record["figures"]:
            assert figure["name"] in text
            if "p10" in figure:
                assert figure["p10"] <= figure["value"] <= figure["p90"]
                assert figure["n"] >= 2
    core = json.loads((out / "core_speed.json").read_text())
    # The headline figures are the ratios the module measured, not copies.
    measured = core["results"]["results"][
        "(d) BN calibration per width vs predict"]["digits_cnn"]
    names = {f["name"]: f["value"] for f in core["figures"]}
    key = "BN calibration of a width · digits_cnn · calibrate/predict w1"
    assert names[key] == measured["calibrate/predict w1"]["median"]
    assert (out / "core_speed.png").stat().st_size > 1000
    assert "core_speed.png" in core["plots"]
    thresholds = json.loads((out / "early_exit_speed.json").read_text())
    assert {f["goal"] for f in thresholds["figures"]} == {"< 1"}


def test_a_finished_suite_is_kept_when_run_again(smoke_run):
    out, _ = smoke_run
    before = (out / "early_exit_speed.json").read_text()
    record, kept = harness.run_suite(
        suites.SUITES["early_exit_speed"], "smoke", out,
        "core_speed,early_exit_speed")
    assert kept and (out / "early_exit_speed.json").read_text() == before
    assert record["status"] == "ok"


def test_readme_section_is_generated_from_the_records(smoke_run, tmp_path):
    out, _ = smoke_run
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Results\n\n{report.BEGIN}\nstale text\n"
                      f"{report.END}\n\n## After\nkept\n")
    records = report.update_readme(readme, out)
    text = readme.read_text()
    assert [r["suite"] for r in records] == ["core_speed", "early_exit_speed"]
    assert "stale text" not in text and text.endswith("## After\nkept\n")
    for record in records:
        assert harness.provenance(record) in text
        assert record["figures"][0]["name"] in text
    assert text.index("`core_speed`") < text.index("`early_exit_speed`")
    # Regenerating from the same records changes nothing.
    report.update_readme(readme, out)
    assert readme.read_text() == text
    assert (out / "index.md").exists()
    # A second folder (a full run of one suite): both shown, full first.
    full = tmp_path / "full"
    full.mkdir()
    record = json.loads((out / "early_exit_speed.json").read_text())
    record.update(mode="full", command="python -m benchmarks --suite "
                  "early_exit_speed --full --out full")
    (full / "early_exit_speed.json").write_text(json.dumps(record))
    report.update_readme(readme, [out, full])
    text = readme.read_text()
    assert text.index("`early_exit_speed` (full)") < text.index(
        "`early_exit_speed` (smoke)")
    assert "--out full" in text and "1 suites (full)" in text


def test_a_record_that_resumed_stored_work_says_how_long_it_took(
        smoke_run, tmp_path):
    # RePr's and AutoSlim's modules reuse stored runs: such a record takes
    # seconds, and its provenance and the index must not pass that off as
    # the measurement's duration.
    out, _ = smoke_run
    record = json.loads((out / "early_exit_speed.json").read_text())
    record.update(seconds=12.0, results={"wall_seconds": 6000.0})
    repr_suite = suites.SUITES["repr"]
    harness._set_work_minutes(record, repr_suite)
    assert record["work_minutes"] == 100.0
    line = harness.provenance(record)
    assert "0.2 min (resumed stored work: 100 min in all)" in line
    folder = tmp_path / "resumed"
    folder.mkdir()
    (folder / "early_exit_speed.json").write_text(json.dumps(record))
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.BEGIN}\n{report.END}\n")
    report.update_readme(readme, folder)
    assert ("0.2 min of measurement in all (the sum of their durations); "
            "100 min with the stored work they resumed.") in readme.read_text()
    # A run that did its work itself says nothing more.
    record.update(seconds=6000.0)
    harness._set_work_minutes(record, repr_suite)
    assert "work_minutes" not in record
    assert "resumed" not in harness.provenance(record)
    record.update(seconds=12.0, results={"total_minutes": 239.0})
    harness._set_work_minutes(record, suites.SUITES["autoslim"])
    assert record["work_minutes"] == 239.0


def test_bad_input_is_refused_with_what_is_allowed(tmp_path):
    done = _run("--suite", "nope", "--quick", "--out", str(tmp_path))
    assert done.returncode == 2 and "choose from core_speed" in done.stderr
    done = _run("--suite", "repr", "--smoke", "--out", str(tmp_path))
    assert done.returncode == 2 and "no smoke setting" in done.stderr
    done = _run("--suite", "repr", "--out", str(tmp_path))
    assert done.returncode == 2 and "--quick" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="no generated results section"):
        report.update_readme(readme, tmp_path)
    assert readme.read_text() == "# no markers\n"


def test_validate_names_what_is_wrong():
    with pytest.raises(ValueError) as error:
        harness.validate({"format": harness.RECORD_FORMAT,
                          "seconds": "1"})
    assert "missing 'figures'" in str(error.value)
    assert "'seconds' is str" in str(error.value)
    good = {key: 1.0 if isinstance(kind, tuple) else kind()
            for key, kind in harness.REQUIRED.items()}
    good.update(format=harness.RECORD_FORMAT, mode="quick", status="ok",
                seconds=1.0, figures=[{"name": "r", "value": 2.0,
                                       "unit": "ratio", "p10": 1.0,
                                       "p90": 1.5, "n": 3}])
    with pytest.raises(ValueError, match="median outside p10-p90"):
        harness.validate(good)
    good["figures"][0]["p90"] = 2.5
    assert harness.validate(good) is good


def test_every_suite_has_quick_and_full_settings_and_a_budget():
    assert sum(s.minutes["quick"] for s in suites.SUITES.values()) <= 45
    for suite in suites.SUITES.values():
        assert {"quick", "full"} <= set(suite.argv), suite.name
        assert suite.minutes["full"] <= 150, suite.name
        assert suite.kind in ("speed", "accuracy")
        assert "--output_dir" not in suite.argv["quick"]


def test_a_failing_suite_prints_its_cause(tmp_path, monkeypatch, capsys):
    # A suite whose CIFAR-10 archive is missing: the console line and the
    # record must say so, not just "last lines of log.txt:".
    missing = tmp_path / "no-such-archive.tar.gz"
    failing = suites.Suite(
        "missing_archive", "reads an archive that is not there", "accuracy",
        "benchmarks.any_width_cifar10",
        argv={"quick": ["--archive", str(missing), "--cache_dir",
                        str(tmp_path / "cache")]},
        minutes={"quick": 0.1}, cut={}, results="none.json",
        headline=lambda results: [], needs_cifar10=True)
    monkeypatch.setitem(suites.SUITES, failing.name, failing)
    records = harness.run(failing.name, "quick", tmp_path / "out", verbose=1)
    assert records[0]["status"] == "failed"
    printed = capsys.readouterr().out
    status_line = next(line for line in printed.splitlines()
                       if line.strip().startswith("missing_archive: failed"))
    assert "archive not found" in status_line, printed
    assert str(missing) in status_line
    assert "archive not found" in records[0]["error"].splitlines()[0]


def test_failure_cause_picks_the_exception_line():
    traceback = ("$ python -m benchmarks.x\nTraceback (most recent call last):"
                 "\n  File \"x.py\", line 3, in <module>\n    main()\n"
                 "FileNotFoundError: CIFAR-10 archive not found: /a.tar.gz\n"
                 "I0000 00:00 shutdown chatter from a native library\n")
    assert harness.failure_cause(traceback) == (
        "FileNotFoundError: CIFAR-10 archive not found: /a.tar.gz")
    assert harness.failure_cause("started\nbad settings: --foo\n\n") == (
        "bad settings: --foo")
    assert harness.failure_cause("") == "(the log is empty)"


def test_cifar10_folder_is_the_library_preparation(tmp_path):
    # One implementation: the benchmarks' CIFAR-10 folder is made by
    # keras_slim.data.prepare_image_folder (atomic, marker file).
    import io
    import tarfile

    import numpy as np
    import tensorflow as tf

    from benchmarks import common

    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("airplane", "bird"):
            for i in range(2):
                content = tf.io.encode_jpeg(
                    np.full((32, 32, 3), 40 * i, np.uint8)).numpy()
                info = tarfile.TarInfo(f"train/{name}/{i:04d}.jpg")
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    folder = common.cifar10_folder(archive, tmp_path / "cache")
    assert folder == tmp_path / "cache" / "train"
    assert (tmp_path / "cache" / ".keras_slim_prepared.json").is_file()
    assert sorted(p.name for p in folder.iterdir()) == ["airplane", "bird"]
    with pytest.raises(FileNotFoundError, match="CIFAR-10 archive not found"):
        common.cifar10_folder(tmp_path / "missing.tar.gz", tmp_path / "c2")


def test_repr_probes_are_set_against_the_standard_run_over_the_same_steps():
    from benchmarks import repr_cifar10

    args = repr_cifar10.parse_args(["--runs", "convnet_standard"])
    # 703 steps per epoch, 10 epochs, executions of 37 steps: the
    # paper's proportions put events at 20 / 30 / 50 / 60 / 80 / 90%.
    steps = repr_cifar10.event_steps("convnet", args, 7030, 37)
    assert steps == {s: s + 74 for s in (1406, 2109, 3515, 4218, 5624, 6327)}

    def run(seed, final, **extra):
        return {"seed": seed, "final_val_accuracy": final, "epochs": 10,
                "train_images": 45000, **extra}

    probe = {"step": 1406, "event": "drop", "cycle": 0, "before": 0.60,
             "right_after": 0.37, "later": 0.50, "later_steps": 74}
    results = {
        "convnet_standard@0": run(0, 0.73, probes_at={"1406": 0.61,
                                                      "1480": 0.65}),
        "convnet_repr@0": run(0, 0.72, probes=[probe], events=[
            {"step": 1406, "event": "drop", "max_layer_share": 0.3}]),
    }
    row = repr_cifar10.summarize(results)["convnet_repr"]
    assert row["worst_probe_points"] == pytest.approx(-10.0)
    # The standard run gained 4 points over the same 74 steps.
    assert row["worst_probe_vs_standard"] == pytest.approx(-14.0)
    report = {"results": results, "command": "c1", "commands": ["c1", "c2"],
              "date": "d", "machine": "m", "wall_seconds": 60}
    text = repr_cifar10.markdown(report)
    assert "0.610 -> 0.650 (+4.0)" in text
    assert "- convnet_standard@0: 1406: 0.610, 1480: 0.650" in text
    assert "Commands: `c1`, then `c2`" in text
    # A standard run without probes (older records) leaves the column empty.
    del results["convnet_standard@0"]["probes_at"]
    assert "worst_probe_vs_standard" not in repr_cifar10.summarize(
        results)["convnet_repr"]
    assert "->" not in repr_cifar10.markdown(report)
    # The headline names each RePr row's number of cycles.
    results["convnet_repr@0"]["config"] = {"schedule_shares": [0.2, 0.1, 3]}
    names = [f["name"] for f in suites.repr_headline({"results": results})]
    assert "ConvNet, RePr (defaults) · 3 cycles (mean of 1 seed)" in names


def test_autoslim_fidelity_rows_take_the_exhaustive_reference_from_holdout():
    # A screened search that finished before the exhaustive one reached any
    # target: its time is still reported, and the exhaustive configuration
    # the hold-out stage found later is what it is compared with.
    def config(name, accuracy, minutes):
        return {"name": name, "search_accuracy": accuracy,
                "exhaustive_search_accuracy": None,
                "minutes_to_reach": minutes}

    fidelity = {
        "screened_128_3_3": {
            "screen_images": 128, "finalists": 3, "picks_per_step": 3,
            "load_average_at_start": [1.5, 1.7, 2.1],
            "configs": [config("like_1.25x", 0.458, 9.0),
                        config("like_1x", 0.443, 16.0)]},
        "holdout": {"configs": [
            {"search": "exhaustive", "name": "like_1.25x",
             "search_accuracy": 0.470, "holdout_accuracy": 0.4500},
            {"search": "screened_128_3_3", "name": "like_1.25x",
             "search_accuracy": 0.458, "holdout_accuracy": 0.4520},
            {"search": "screened_128_3_3", "name": "like_1x",
             "search_accuracy": 0.443, "holdout_accuracy": 0.4300}]},
    }
    rows = {r["name"].split(": ", 1)[1]: r
            for r in suites._fidelity_rows(fidelity)}
    timing = rows["search to like_1x, alone (load 1.50 at start)"]
    assert (timing["value"], timing["goal"]) == (16.0, "< 30")
    assert rows["like_1.25x search accuracy - exhaustive"]["value"] == (
        pytest.approx(-1.2))
    assert rows["like_1.25x hold-out accuracy - exhaustive"]["value"] == (
        pytest.approx(0.2))
    # No exhaustive configuration at 1x yet: nothing to compare with.
    assert not any(name.startswith("like_1x ") for name in rows)
    # A search screened by accuracy first says so, and is compared with
    # the replay of its own rule.
    fidelity["screened_128_3_3_acc"] = dict(
        fidelity["screened_128_3_3"], screen_by="accuracy")
    fidelity["replay"] = {"table": [
        {"screen_images": 128, "finalists": 3, "rule": rule, "steps": 166,
         "same_pick": share}
        for rule, share in (("log_likelihood", 0.108),
                            ("accuracy_then_log_likelihood", 0.205))]}
    rows = {r["name"]: r for r in suites._fidelity_rows(fidelity)}
    label = "screened (128 images, 3 finalists, 3 picks per step"
    assert rows[f"{label}, accuracy first): steps picking the exhaustive "
                "group (166 exhaustive states)"]["value"] == (
        pytest.approx(20.5))
    assert rows[f"{label}): steps picking the exhaustive group (166 "
                "exhaustive states)"]["value"] == pytest.approx(10.8)


def test_autoslim_headline_pairs_retraining_seeds():
    # Two seeds: the difference is the mean of the paired differences, its
    # spread the seeds' min and max; a record of one seed reads as before.
    def row(by_seed):
        return {"macs": 8.0e7, "accuracy": sum(by_seed.values()) / 2,
                "accuracy_by_seed": by_seed}

    report = {"retrained": {
        "like_1x/searched": row({"0": 0.54, "1": 0.56}),
        "like_1x/uniform": row({"0": 0.56, "1": 0.55}),
    }}
    rows = {r["name"]: r for r in suites.autoslim_headline(report)}
    delta = rows["like_1x: searched - uniform (mean of 2 paired seeds)"]
    assert delta["value"] == pytest.approx(-0.5)
    assert (delta["p10"], delta["p90"], delta["n"]) == (
        pytest.approx(-2.0), pytest.approx(1.0), 2)
    assert "like_1x/searched (80.0M MACs, mean of 2 seeds)" in rows
    one_seed = {"retrained": {
        "like_1x/searched": {"macs": 8.0e7, "accuracy": 0.54},
        "like_1x/uniform": {"macs": 8.0e7, "accuracy": 0.56}}}
    rows = {r["name"]: r for r in suites.autoslim_headline(one_seed)}
    assert rows["like_1x: searched - uniform"]["value"] == pytest.approx(-2.0)
    assert "p10" not in rows["like_1x: searched - uniform"]


def test_autoslim_retrains_another_search_only_on_its_architecture():
    # The ResNet-20 record was searched on width_range 0.35,1.5: its
    # configurations come back with a supernet of the same architecture;
    # another full width is refused with the fingerprints and the fix.
    from benchmarks import autoslim_cifar10
    from keras_slim import search

    path = str(pathlib.Path(__file__).parents[1] / "benchmarks" /
               "results_full" / "autoslim_resnet20" / "autoslim" /
               "search.json")
    args = autoslim_cifar10.parse_args(
        ["--quick", "--width_range", "0.35,1.5", "--configs_from", path])
    found, supernet = autoslim_cifar10.configs_from(args)
    assert [c["name"] for c in found["configs"]] == [
        "like_1x", "like_0.75x", "like_0.5x"]
    assert set(found["configs"][0]["channels"]) == set(
        search.config_from_counts(
            supernet, supernet.channels_for(1.0)))
    args = autoslim_cifar10.parse_args(
        ["--quick", "--width_range", "0.35,1.0", "--configs_from", path])
    with pytest.raises(ValueError, match="searched on another architecture"
                       ".*--width_range"):
        autoslim_cifar10.configs_from(args)
