"""kernels: executors for planned contractions — torch (reference), numba on the CPU, CUDA on the GPU.

``get_executor(name)`` validates a name; ``adntn`` layers take ``executor=`` and run their generator
through :func:`kernels.executor.numba_weight` (or the CUDA kernels) when chosen.
"""

from kernels.errors import KernelsError
from kernels.executor import EXECUTORS, get_executor, numba_weight

__all__ = ["EXECUTORS", "KernelsError", "get_executor", "numba_weight"]
