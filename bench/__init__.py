"""Benchmark: regionsync against native logical replication and the COPY floor.

Run by hand: ``python -m bench`` (see ``python -m bench --help``). Not part of the test
suite's timing.
"""

import signal
import sys


def cleanup_on_sigterm() -> None:
    """A bench stopped with SIGTERM (``kill``, ``timeout``) unwinds like one stopped with
    Ctrl-C: its ``finally`` blocks stop the daemons and clusters it started. Python's
    default for SIGTERM ends the process on the spot, and three ``regionsync run`` daemons
    of a bench killed that way kept polling their vanished clusters for half an hour, a
    quarter of a core under every run after it."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
