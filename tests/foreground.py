"""Running a child as a terminal's foreground job would, for tests that stop it with Ctrl-C."""

from __future__ import annotations

import signal


def sigint_as_in_a_terminal() -> None:
    """``preexec_fn`` for a child that a test stops with Ctrl-C (SIGINT). A job started in the background of
    a non-interactive shell (`cmd &`, as some CI runners do) inherits SIGINT ignored, and Python then
    installs no KeyboardInterrupt handler: restore the default, as a terminal's foreground job has it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
