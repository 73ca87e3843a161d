"""The one exception type of :mod:`kernels`."""


class KernelsError(ValueError):
    """An executor that cannot run, or a network it cannot take; the message says why and what to use."""
