"""The one exception family of :mod:`tnplan`."""


class TnplanError(Exception):
    """Base class of every error raised on purpose by :mod:`tnplan`."""


class NetworkError(TnplanError, ValueError):
    """A tensor network, equation, path or plan is malformed; the message names the culprit."""


class PlanError(TnplanError, ValueError):
    """A planning request or plan cannot be honoured (bad option, impossible memory limit, wrong arrays)."""
