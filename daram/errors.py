"""The one exception type users see: a one-line message, no traceback."""


class DaramError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits with code 2."""
