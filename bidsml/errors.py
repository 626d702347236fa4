"""The project's error hierarchy: each says what, where, and how to fix."""


class BidsError(Exception):
    """Base class of every error this project raises on purpose."""


class RecipeError(BidsError):
    """A recipe file or override is invalid (names the key and value)."""


class DataError(BidsError):
    """An input record is malformed (names the file, line/record and field)."""


class ArtifactError(BidsError):
    """An artifact is missing, incomplete or does not match its digest."""


class FeatureError(BidsError):
    """Gradient features cannot be computed for an example or parameter."""


class SelectionError(BidsError):
    """Selection inputs are invalid (scores, budget, task labels)."""


class ClusterError(BidsError):
    """The Dask cluster of `execution.address` is unreachable, not a scheduler, has no workers, or went away."""
