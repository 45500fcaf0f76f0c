"""Every benchmark module imports: a rename in app/ or workers/ that a benchmark still names fails here, not when
someone next runs the benchmark."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import bench

MODULES = sorted(module.name for module in pkgutil.iter_modules(bench.__path__))


@pytest.mark.parametrize("name", MODULES)
def test_the_benchmark_module_imports(name: str) -> None:
    importlib.import_module(f"bench.{name}")
