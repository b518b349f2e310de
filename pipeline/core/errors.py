"""The suite's exceptions: every error a user can cause derives from `PipelineError`.

Job entry points catch `PipelineError`, print its message and exit non-zero; anything else is a bug
and keeps its traceback.
"""


class PipelineError(Exception):
    """Base class for errors caused by input, configuration or the environment."""


class ConfigError(PipelineError):
    """The configuration names something invalid; the message lists the valid choices."""


class DataError(PipelineError):
    """The input data cannot be used; the message names the file and the reason."""


class StoreError(PipelineError):
    """The object store or folder could not be read or written."""


class StoreKeyNotFound(StoreError):
    """A key that should exist in a store does not."""


class StageFailed(PipelineError):
    """A pipeline stage could not complete; the message says which and why."""
