"""A stand-in for the CLI a stage fork server runs (tests/unit/test_stage_forks.py): what a
forked command does is chosen by its argv."""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import threading
import time


def main() -> None:
    """report CODE | wait-term | kill-self SIGNUM | hang | burn SECONDS | interrupt | linger."""
    what = sys.argv[1]
    if what == "report":
        atexit.register(lambda: print("atexit ran"))
        print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "stdin": sys.stdin.read(),
                          "env": os.environ.get("FORK_TEST_VALUE"), "pid": os.getpid(),
                          "c_env": os.popen("echo $FORK_TEST_VALUE").read().strip()}))
        print("to stderr", file=sys.stderr)
        sys.exit(int(sys.argv[2]))
    if what == "wait-term":
        signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM", flush=True), sys.exit(5)))
        print("waiting", flush=True)
        while True:
            signal.pause()
    if what == "kill-self":
        os.kill(os.getpid(), int(sys.argv[2]))
    if what == "hang":
        print(os.getpid(), flush=True)
        while True:
            signal.pause()
    if what == "interrupt":
        raise KeyboardInterrupt
    if what == "linger":  # main returns; a non-daemon thread holds the exit (reads stdin)
        threading.Thread(target=_linger, name="linger").start()
    if what == "burn":
        end = time.process_time() + float(sys.argv[2])
        while time.process_time() < end:
            pass


def _linger() -> None:
    """Say when the main thread has stopped (the exit is joining this thread), then block."""
    threading.main_thread().join()
    print("exiting", flush=True)
    sys.stdin.read()
