"""regionsync: multi-region PostgreSQL synchronization with field-level residency policies.

The package is laid out by pipeline stage: ``capture`` (reading deltas from a peer),
``policy`` (what may cross which border), ``apply`` (writing into the local region),
``pipeline`` (one pull -> filter -> apply cycle), ``daemon`` (scheduling, lifecycle),
``metrics`` and ``cli``.
"""

__version__ = "0.1.0"
