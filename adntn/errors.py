"""The one exception type of :mod:`adntn`."""


class AdntnError(ValueError):
    """A bad generator or layer configuration, or an input a layer cannot take.

    The message says what is wrong and how to fix it.
    """
