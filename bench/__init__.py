"""Benchmark: regionsync against native logical replication and the COPY floor.

Run by hand: ``python -m bench`` (see ``python -m bench --help``). Not part of the test
suite's timing.
"""
