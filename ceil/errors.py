"""The one exception type the CLI turns into a one-paragraph message and a non-zero exit."""


class CeilError(Exception):
    """A failure the user can act on: the message says what was expected, what was found, and the fix."""


class ConfigError(CeilError):
    """cluster.yaml (or a flavor file) is not valid.

    Where cluster.yaml's own checks refused values, `checkable` is the cluster with each refused
    value set aside (None where that leaves no valid cluster) and `aside` names the keys set
    aside: the features' checks still run on the rest (features.with_feature_problems), so every
    problem comes in one report."""

    def __init__(self, message: str, checkable=None, aside: tuple[str, ...] = ()):
        super().__init__(message)
        self.checkable = checkable
        self.aside = aside
