"""kernels: numba and CUDA executors for planned contractions (not built yet; see the issues)."""
