"""The errors flywheel raises on bad input or an unreachable service.

Each message says what went wrong and what to do about it; the CLI prints it as one line, without a
traceback. `retryable` marks what may pass by itself (a server restarting, a 5xx); the flows retry
only those, never a refused token, a 4xx or bad data.
"""


SETTINGS_EXIT = 2  # the exit code of a child process that cannot start with its settings (its supervisor does not restart it)


class FlywheelError(Exception):
    """A failure with a message a user can act on."""

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class SettingsError(FlywheelError):
    """A setting, params.yaml or the workspace is unusable."""


class LabelConfigError(FlywheelError):
    """A labeling config is missing, malformed, or does not match the project."""


class LabelStudioError(FlywheelError):
    """Label Studio is unreachable, refused the token, or answered something unexpected."""


class TrackingError(FlywheelError):
    """MLflow is unreachable or refused a call."""


class DataError(FlywheelError):
    """Labeled data breaks the data contract; `task_ids` names the Label Studio tasks at fault."""

    def __init__(self, message: str, task_ids: list[int]):
        super().__init__(message)
        self.task_ids = task_ids


class AnnotationError(DataError):
    """An annotation cannot be turned into a training label (unknown label, empty result, ...)."""


class StackError(FlywheelError):
    """A server of the embedded stack would not start or stop."""


class ExportError(FlywheelError):
    """A model that cannot be written in an export format."""
