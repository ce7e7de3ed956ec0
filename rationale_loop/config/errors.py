"""The errors the tool raises about what a user gave it or asked of it.

A `UserError` is a message for a person, not a bug report: the command line prints it on one line and
exits non-zero, without a traceback (set RATIONALE_LOOP_DEBUG=1, or Hydra's HYDRA_FULL_ERROR=1, to
see one). Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A config, a data file, a run directory or a request that cannot be worked with, said in words."""


class RunLockedError(UserError):
    """Another live process holds the run."""


class NonFiniteError(UserError):
    """Training produced a NaN or an infinity; nothing of the step that produced it was applied."""


class CheckpointError(UserError):
    """A finished round's files are missing, changed since the round finished, or do not load."""


class DataError(UserError, ValueError):
    """A data file that cannot be read as the task says; the message names the file and the line."""


class ConfigError(UserError, ValueError):
    """A config that composes but cannot run; the message names the key."""
