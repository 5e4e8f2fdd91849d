"""Pure decisions: no trio, no psycopg, no I/O.

Everything here is deterministic given its inputs (randomness is passed in), so it is
unit tested in microseconds and reused by the store, the worker and the test model.
"""
