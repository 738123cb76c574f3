"""Errors the command line turns into one clear line and a non-zero exit.

Anything raised as an `OvbenchError` is a problem with the user's input or environment
(a bad name, a missing file, a malformed config), not a bug; the CLI prints its message
without a traceback.
"""


class OvbenchError(Exception):
    """Base class for user-facing errors."""


class ConfigError(OvbenchError):
    """A configuration file or override is malformed or names an unknown key."""


class RegistryError(OvbenchError):
    """An unknown method, dataset or benchmark name."""


class DataError(OvbenchError):
    """A dataset file is missing, unreadable or inconsistent."""


class VocabularyError(OvbenchError):
    """A vocabulary is empty, has an empty name or repeats a class."""


class CheckpointError(OvbenchError):
    """A checkpoint is missing, unreadable or does not fit the model."""
