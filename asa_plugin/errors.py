"""Errors that reach the user as one line, never as a traceback."""


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do.

    The CLI prints it as a single line and exits with ``exit_code``.
    """

    exit_code = 2


class ConfigError(UserError):
    """A config file (or ``--set`` override) is invalid."""


class DataError(UserError):
    """A dataset is missing, empty or malformed."""


class PluginError(UserError):
    """A plugin could not be loaded or registered."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3
