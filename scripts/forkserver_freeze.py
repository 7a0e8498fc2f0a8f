"""Imported last by the fork server (scripts/forkserver.py, PRELOAD): its heap, now loaded, goes to
Python's permanent generation (`gc.freeze`).

The cyclic collector then never walks those objects again: not in the forks, whose collections
would otherwise write to every shared page's object headers (copying them: memory, and time in
each run), nor at the fork server's own exit, which once took over ten seconds of `gc` on a busy
machine after its worker stopped.
"""

import gc

gc.freeze()
