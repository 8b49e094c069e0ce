"""Error types that cifargen raises on purpose.

Every problem a user can cause (a bad path, a corrupt file, a bad flag, a diverging run)
surfaces as a subclass of :class:`CifargenError` whose message names the problem and the fix.
The command line prints that message in one line and exits non-zero; anything else is a bug.
"""


class CifargenError(Exception):
    """Base class for the errors cifargen raises deliberately."""


class DataError(CifargenError):
    """The data set is missing, corrupt, or not in a format cifargen reads."""


class ConfigError(CifargenError):
    """A configuration value or command-line flag is invalid."""


class TrainingError(CifargenError):
    """Training cannot go on (for example, the loss became NaN)."""
