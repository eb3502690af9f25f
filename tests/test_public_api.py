"""The public API: every package says what it exports, and shows how.

Each public package has an explicit `__all__`; every name in it resolves,
is not private, and every class or function in it has a docstring with a
`>>>` example. Known internals stay out. Imports only: no training.
"""

import importlib
import inspect
import types

import pytest

PACKAGES = [
    "keras_slim",
    "keras_slim.data",
    "keras_slim.early_exit",
    "keras_slim.export",
    "keras_slim.layers",
    "keras_slim.models",
    "keras_slim.repr",
    "keras_slim.search",
    "keras_slim.training",
]

# Library plumbing that must not be part of any package's public API.
INTERNAL = [
    "optimizer_slots",
    "q_family",
    "exit_shares",
    "thresholds_for_shares",
    "assign_exits",
    "fingerprint",
    "import_tfds",
    "export_staged",
    "graph",
    "compat",
]


def public_names(package):
    module = importlib.import_module(package)
    assert hasattr(module, "__all__"), f"{package} has no __all__"
    return module, list(module.__all__)


@pytest.mark.parametrize("package", PACKAGES)
def test_all_names_resolve_and_are_public(package):
    module, names = public_names(package)
    assert names, f"{package}.__all__ is empty"
    assert len(names) == len(set(names)), f"{package}.__all__ repeats names"
    for name in names:
        assert isinstance(name, str)
        assert not name.startswith("_"), f"{package}.{name} is private"
        assert hasattr(module, name), f"{package}.{name} does not resolve"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_class_and_function_has_an_example(package):
    module, names = public_names(package)
    missing = []
    for name in names:
        value = getattr(module, name)
        if isinstance(value, types.ModuleType):
            continue
        if inspect.isclass(value) or inspect.isfunction(value):
            if ">>>" not in (inspect.getdoc(value) or ""):
                missing.append(name)
    assert not missing, f"{package}: no >>> example in {missing}"


@pytest.mark.parametrize("package", PACKAGES)
def test_package_docstring_has_an_example(package):
    module, _ = public_names(package)
    assert ">>>" in (module.__doc__ or ""), package


@pytest.mark.parametrize("package", PACKAGES)
def test_internal_names_are_not_exported(package):
    _, names = public_names(package)
    leaked = sorted(set(names) & set(INTERNAL))
    assert not leaked, f"{package}.__all__ exports internals {leaked}"


def test_internal_helpers_are_not_reexported():
    """Internals live in their modules, not in the package namespace."""
    import keras_slim

    assert not hasattr(keras_slim.early_exit, "q_family")
    assert not hasattr(keras_slim.early_exit, "exit_shares")
    assert not hasattr(keras_slim.search, "fingerprint")
    assert not hasattr(keras_slim.repr, "optimizer_slots")
    # ... while what users call stays where the README calls it.
    assert callable(keras_slim.register_layer)
    assert callable(keras_slim.search.plots.plot_channels)


def test_star_import_gives_exactly_all():
    namespace = {}
    exec("from keras_slim import *", namespace)  # noqa: S102
    import keras_slim

    assert set(namespace) - {"__builtins__"} == set(keras_slim.__all__)
