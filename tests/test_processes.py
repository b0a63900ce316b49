"""lmops.processes.stop_group stops a local server's whole session: also the processes that moved to a process
group of their own inside it, as Ray's raylet does with every worker (a `ray::IDLE` worker outlived `lmops stop`
in `make demo`'s test)."""

from __future__ import annotations

import subprocess
import sys
import time

from lmops.processes import alive, group_alive, session_alive, stop_group

# the leader starts a child that leaves the leader's process group (os.setpgrp), prints its pid, and sleeps
LEADER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import os, time; os.setpgrp(); print(os.getpid(), flush=True);"
                          " time.sleep(600)"], stdout=sys.stdout)
time.sleep(600)
"""


def test_a_member_of_the_session_in_a_group_of_its_own_is_stopped_too():
    leader = subprocess.Popen([sys.executable, "-c", LEADER], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        stray = int(leader.stdout.readline())
        assert alive(stray) and group_alive(leader.pid) and session_alive(leader.pid)
        stop_group(leader.pid, grace=5, reap=lambda: leader.poll() is not None)
        deadline = time.time() + 5  # its parent is gone: init reaps it, a moment later
        while alive(stray) and time.time() < deadline:
            time.sleep(0.05)
        assert not alive(stray), "the worker in a group of its own outlived stop_group"
        assert not session_alive(leader.pid)
    finally:
        if leader.poll() is None:
            leader.kill()
