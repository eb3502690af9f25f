"""slim() converts one model of every CNN family of keras.applications:
width 1.0 equals the original, strip() equals the model at other widths,
one sandwich fit step runs and the stripped model exports to TFLite.

Families whose Keras constructor takes depth or width settings are built
small (the same block code with fewer blocks); every named model is checked
in full by `benchmarks/applications_sweep.py`."""

import pytest

from tests import applications

# The large ones take most of the time; they still run in CI.
_LARGE = {"InceptionResNet", "Inception", "Xception", "VGG"}
# Hundreds of layers: their sandwich fit step runs eagerly, as tracing it
# takes most of a minute (graph-mode fit of the same layer types is checked
# on the smaller families and in test_model.py).
_EAGER_FIT = {"InceptionResNet", "Inception", "Xception", "NASNet"}


FAMILIES = applications._family_builders()


@pytest.mark.parametrize("family", [
    pytest.param(f, marks=pytest.mark.slow) if f in _LARGE else f
    for f in sorted(FAMILIES)
])
def test_every_family_converts_exactly(family, tmp_path):
    what, size, build = FAMILIES[family]
    result = applications.check_conversion(
        what, size, export_dir=tmp_path / "tflite", build=build,
        run_eagerly=family in _EAGER_FIT,
    )
    assert result["tflite_verified"]
    assert 0 < result["params_at_half"] < result["params"]
