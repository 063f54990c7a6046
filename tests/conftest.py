import os

# The suite is dominated by XLA compiling many small programs, not by running them: LLVM's
# optimisation level 0 makes it about a fifth faster (184 tests and notebooks: 394 -> 286 s on
# the 2-core VM) and changes only rounding; the suite passes at both levels. Benchmarks keep
# XLA's default. A caller's own XLA_FLAGS win (`XLA_FLAGS= pytest ...` tests the optimised build).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

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
