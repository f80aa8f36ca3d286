"""Deadlines for everything a test waits on: a child process, a thread, a file that should appear.

A wait that outlives its deadline fails the test with a message that says what it waited for, and
the children it started are killed (with their own children), so a stuck child fails CI instead of
hanging it. Children started with ``start`` or ``run`` never outlive their test: tests/conftest.py
kills any still running when the test ends.

Deadlines are hang backstops, never performance targets: each is written as what a quiet 2-core
machine needs with room to spare, and stretched here by SLACK (default 5, or $LADDER_TEST_SLACK), so
that a machine several times oversubscribed still passes, slowly. A test that passes never waits
for one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

_started: list[subprocess.Popen] = []
SLACK = float(os.environ.get("LADDER_TEST_SLACK", 5))


def stretched(timeout: float) -> float:
    return timeout * SLACK


def wait_until(predicate, timeout: float, what: str, interval: float = 0.01):
    """Calls ``predicate()`` every ``interval`` seconds until it returns something true, and returns
    that; fails the test after ``timeout`` seconds (stretched)."""
    timeout = stretched(timeout)
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return result


def join(thread, timeout: float, what: str) -> None:
    """``thread.join(timeout)`` that fails the test if the thread is still running after it (stretched)."""
    timeout = stretched(timeout)
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"{what} still running after {timeout:g} s")


def start(command, **popen_kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` in a session of its own, so that ``kill`` reaches the child's children
    too (torchrun's ranks)."""
    process = subprocess.Popen(command, start_new_session=True, **popen_kwargs)
    _started.append(process)
    return process


def kill(process: subprocess.Popen) -> None:
    """SIGKILL to the process and everything left in its process group; reaps it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the whole group has exited already
        pass
    process.wait()


def kill_leftovers() -> None:
    """Kills every child that ``start`` started and that is still running."""
    while _started:
        kill(_started.pop())


def finish(process: subprocess.Popen, timeout: float, what: str):
    """``process.communicate()`` with a deadline: a child still running after ``timeout`` seconds is
    killed and fails the test, with the end of its stderr when that was captured (stretched)."""
    timeout = stretched(timeout)
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(process)
        _, err = process.communicate()
        tail = f"; its stderr ends with:\n{err[-3000:]}" if err else ""
        pytest.fail(f"{what} still running after {timeout:g} s: killed it{tail}")


def run(command, *, timeout: float, what: str | None = None, check: bool = False, capture_output: bool = False,
        **popen_kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` whose timeout kills the child's whole process group and fails the test."""
    if capture_output:
        popen_kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process = start(command, **popen_kwargs)
    out, err = finish(process, timeout, what or f"`{' '.join(map(str, command))[:200]}`")
    done = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    if check:
        done.check_returncode()
    return done


def join_spawned(context, timeout: float, what: str) -> None:
    """Joins the processes of ``torch.multiprocessing.spawn(..., join=False)`` as ``join=True``
    would (a failed process raises), with a deadline; any still running at the end is killed."""
    try:
        wait_until(lambda: context.join(timeout=1), timeout, what)
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()
