"""Failpoints: named places where a test can make this process die, as etcd's gofail does.

The operator's promise is that it can be killed anywhere and converge on restart. Killing from outside
cannot hit the few milliseconds between two MLflow writes, so the writes that record an outcome are
separated by named failpoints: with ``LMOPS_FAILPOINT=<name>`` in its environment the process SIGKILLs
itself when it reaches that point (no cleanup, no atexit: exactly a kill). Unset, a failpoint is one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "LMOPS_FAILPOINT"


def failpoint(name: str) -> None:
    """Die here (SIGKILL) when ``$LMOPS_FAILPOINT`` names this point."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
