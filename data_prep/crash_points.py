"""Test hook: kill -9 this process at a named point, so tests can crash at exact moments.

    DATA_PREP_CRASH_AT=shard_renamed:3 python -m data_prep.fineweb ...

SIGKILLs the process the 3rd time it passes `shard_renamed` (a shard file renamed into
place, the manifest not yet updated); `chunk:2:SIGTERM` sends SIGTERM instead. Points: chunk (a tokenized chunk consumed), worker (a
worker starts a chunk: kills that worker), shard_written (a shard's temp file complete, not
renamed), shard_renamed, manifest_written. Real SIGKILL, not an exception: nothing gets to
clean up, exactly like `kill -9` or a node failure. Without the variable a point is a dict
lookup.
"""

from __future__ import annotations

import collections
import os
import signal

CRASH_ENV = "DATA_PREP_CRASH_AT"
_counts: collections.Counter = collections.Counter()


def crash_point(name: str) -> None:
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    point, _, rest = spec.partition(":")
    nth, _, signame = rest.partition(":")
    if point == name:
        _counts[name] += 1
        if _counts[name] >= int(nth or 1):
            os.kill(os.getpid(), getattr(signal, signame or "SIGKILL"))
