"""The one base class for errors a user can fix (bad config, bad data, unreachable server).

The CLI prints these as one clear message and exits non-zero; anything else is a bug and keeps
its traceback.
"""


class LmopsError(Exception):
    """An error caused by input or environment, with a message that says what and where."""
