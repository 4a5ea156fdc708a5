"""Errors that carry a message meant for the person using the app.

Raise `UserFacingError` (or a subclass) when the user can fix the problem: the message names
the bad value and says what is accepted. The UI turns these into `gr.Warning`/`gr.Error`;
anything else is a bug and is logged with its traceback. This module imports nothing heavy.
"""

from __future__ import annotations


class UserFacingError(Exception):
    """A problem the user can act on; `str(err)` is shown to them as is."""


class InvalidUpload(UserFacingError):
    """An uploaded file was rejected (type, size, pixels, corrupt data, name)."""


class ConfigError(UserFacingError):
    """A configuration value, preset or flag is invalid."""


class ModelUnavailable(UserFacingError):
    """A preset's weights cannot be found or loaded here."""


class PromptTooLong(UserFacingError):
    """The prompt cannot fit in the model's context even after trimming history."""


class DuplicateRegistration(ValueError):
    """A registry already holds this name (a programming error, not a user one)."""
