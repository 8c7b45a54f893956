"""The one exception type the CLI turns into a one-paragraph message and a non-zero exit."""


class CeilError(Exception):
    """A failure the user can act on: the message says what was expected, what was found, and the fix."""


class ConfigError(CeilError):
    """cluster.yaml (or a flavor file) is not valid."""
