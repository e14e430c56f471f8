"""The scripts of benchmarks/ (no package) as modules, so tests can call their functions.

Import from a test (pytest puts tests/ on sys.path): `from benchmark_scripts import load_benchmark`.
"""
import importlib.util

from advent import PROJECT_ROOT


def benchmark_path(name):
    return PROJECT_ROOT / "benchmarks" / f"{name}.py"


def load_benchmark(name):
    """benchmarks/<name>.py, imported as the module `name`."""
    spec = importlib.util.spec_from_file_location(name, benchmark_path(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
