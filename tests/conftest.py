import os
import shutil
import tempfile


# The suite is dominated by XLA compiling many small programs, not by running them: LLVM's
# optimisation level 0 makes it about a fifth faster (184 tests and notebooks: 394 -> 286 s on
# the 2-core VM) and changes only rounding; the suite passes at both levels. Benchmarks keep
# XLA's default. A caller's own XLA_FLAGS win (`XLA_FLAGS= pytest ...` tests the optimised build).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

# Many programs recur across test files (the dense references of the shared pipelines, the same
# routes at the same shapes), and the module fixture below drops the in-memory ones: a
# compilation cache on disk, one per run and shared by the worker processes (and the notebook
# and docs subprocesses, which inherit the environment), compiles each program once.
# Measured on the 2-core VM: four test files in one process (selected, errors, blocks, dense
# route), CPU time 162 -> 129 s; the whole suite on two workers, 1072 -> 964 s.
_CACHE_ROOT = os.path.join(tempfile.gettempdir(), f"hessinv-tests-{os.getuid()}")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # workers inherit the controller's
    os.makedirs(_CACHE_ROOT, exist_ok=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="run-", dir=_CACHE_ROOT)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax

# float64 everywhere by default (float32 tests build float32 arrays explicitly), and strict
# dtype promotion so that an accidental float32/float64 mix in the library is a test failure.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test module. The suite compiles many hundreds of
    XLA:CPU programs; kept all at once, the whole run crashed inside XLA's compiler (a segfault
    while compiling the spectrum tests, which pass on their own), and modules share no programs
    worth keeping."""
    yield
    jax.clear_caches()


def pytest_unconfigure(config):
    """The run's compilation cache goes with the run (the controller, or a run without workers,
    removes it; a cache directory the caller chose is left alone)."""
    if "PYTEST_XDIST_WORKER" not in os.environ and os.environ["JAX_COMPILATION_CACHE_DIR"].startswith(_CACHE_ROOT):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
