"""Pure, synchronous, I/O-free core: chain window, deposit lifecycle, address index.

Nothing here awaits, reads a clock or touches a socket; every function takes
what it needs and returns events or decisions, so it is tested table-driven.
"""
