"""Children that need a change made before they run (SIGINT's disposition, capabilities), made by a small
Python prelude that then execs the real command.

Not ``preexec_fn``: it makes ``subprocess`` fork() the test process instead of vfork(), and a fork of a
process in which Ray Train had run left Ray's GCS state client waiting forever (``ray.cluster_resources()``
never returned, beyond pytest-timeout's reach: a CI run hung until it was killed).
"""

from __future__ import annotations

import sys

_SIGINT_DEFAULT = "import signal; signal.signal(signal.SIGINT, signal.SIG_DFL)"


def exec_after(prelude: str, cmd: list[str]) -> list[str]:
    """``cmd``, started by a Python that first runs ``prelude`` and then execs it (what a change to the
    process carries across exec: signal dispositions, the capability bounding set)."""
    return [sys.executable, "-c", f"{prelude}\nimport os, sys\nos.execvp(sys.argv[1], sys.argv[1:])", *cmd]


def as_in_a_terminal(cmd: list[str]) -> list[str]:
    """``cmd`` as a terminal's foreground job would run, for tests that stop it with Ctrl-C (SIGINT). A job
    started in the background of a non-interactive shell (`cmd &`, as some CI runners do) inherits SIGINT
    ignored, and Python then installs no KeyboardInterrupt handler: restore the default."""
    return exec_after(_SIGINT_DEFAULT, cmd)
