"""Named exceptions: the CLI turns each into a one-line message with its fix."""
from __future__ import annotations

__all__ = [
    "GraftError", "DataError", "BackboneNotFoundError", "WeightsNotFoundError",
    "NotFittedError", "RunDirError", "ModelFileError", "BadImageError", "ConfigError",
    "ResumeMismatchError", "RunConfigError", "RunModifiedError", "RunBusyError",
    "RunExistsError", "ExportError",
]


class GraftError(Exception):
    """Base class of every error graftwork raises on purpose.

    ``fix`` says what the user can do about it; the CLI prints ``message`` and ``fix``.
    """

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} ({self.fix})" if self.fix else self.message


class DataError(GraftError):
    """The image folder cannot be used as given (missing, no classes, empty class, ...)."""


class BadImageError(DataError):
    """One image file cannot be decoded (raised only in strict mode)."""


class BackboneNotFoundError(GraftError):
    """No backbone of that name exists in the registry or in timm."""


class WeightsNotFoundError(GraftError):
    """No source could provide pretrained weights for a backbone."""


class NotFittedError(GraftError):
    """A classifier was used before ``fit`` or ``load``."""


class RunDirError(GraftError):
    """A run directory is missing or does not hold a saved model."""


class ModelFileError(GraftError):
    """A model or weights file is corrupt, tampered with, or does not match the backbone."""


class ConfigError(GraftError):
    """A parameter value does not fit (e.g. more blocks to unfreeze than the backbone has)."""


class ResumeMismatchError(GraftError):
    """A checkpoint was written for other data or settings than the run being resumed."""


class RunConfigError(ModelFileError, RunDirError):
    """A run's config.json is missing a field, or holds a value graftwork cannot use."""


class RunModifiedError(ModelFileError, RunDirError):
    """A run's files no longer match the integrity seal written when it was saved."""


class RunBusyError(RunDirError):
    """Another live process is writing the run directory."""


class RunExistsError(RunDirError):
    """``--out`` already holds a finished run and no flag says what to do with it."""


class ExportError(GraftError):
    """An export could not be written or failed its own verification."""
