import jax

# float64 everywhere by default (float32 tests build float32 arrays explicitly), and strict
# dtype promotion so that an accidental float32/float64 mix in the library is a test failure.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
