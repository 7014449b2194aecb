"""Bounded runs of multi-process commands: a hang fails the test and leaves no process behind."""
import os
import signal
import subprocess

import pytest


def descendants(pid: int) -> list:
    """Every live descendant of ``pid`` (from /proc). torchrun starts each worker in a session of its
    own, so killing the launcher's process group would leave the workers running."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_tree(pid: int) -> None:
    for p in [pid, *descendants(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_bounded(cmd, timeout: float, what: str, **popen_kw):
    """``(returncode, stdout, stderr)`` of ``cmd``; past ``timeout`` seconds it and all its
    descendants are killed and the test fails naming ``what`` (stdout/stderr are text pipes unless
    given)."""
    popen_kw = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen_kw}
    proc = subprocess.Popen(cmd, **popen_kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"{what}: not finished in {timeout:g} s (a collective out of step?)\n{(err or out or '')[-3000:]}")
    return proc.returncode, out, err
