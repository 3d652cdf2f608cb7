"""Fault injection for crash tests: end the process (or raise) at a named point of a commit or a save.

A test sets `SIGHTLINE_FAULT_AT=POINT[@N][:raise]` in a child process's environment: the N-th time (default
the first) the code reaches POINT, the process ends at once with `os._exit(FAULT_EXIT_CODE)`, as a
`kill -9` would (no `finally`, no flush), or, with `:raise`, raises `InjectedFault` there. Points are named
`<operation>:<step>`, for example `enroll:before-audit`, `forget:before-commit`, `allow:after-commit`,
`index-save:after-replace`. Unset (always, outside tests), `reached()` costs one dictionary lookup.

This module is the one exception to "the engine never reads the environment": it is a test hook, read once
at import, and does nothing unless that variable is set.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

FAULT_ENV = "SIGHTLINE_FAULT_AT"
FAULT_EXIT_CODE = 86


class InjectedFault(RuntimeError):
    """Raised at the armed point when the fault spec ends in `:raise`."""


def _parse(spec: str) -> tuple[str, int, bool]:
    raise_it = spec.endswith(":raise")
    if raise_it:
        spec = spec[: -len(":raise")]
    point, _, nth = spec.partition("@")
    return point, int(nth or 1), raise_it


_SPEC = _parse(os.environ[FAULT_ENV]) if os.environ.get(FAULT_ENV) else None
_seen = 0


def reached(point: str) -> None:
    """Mark that execution reached `point`; ends the process (or raises) there when a test armed it."""
    global _seen
    if _SPEC is None or _SPEC[0] != point:
        return
    _seen += 1
    if _SPEC[2] and _seen >= _SPEC[1]:
        raise InjectedFault(f"fault injected at {point}")
    if _seen == _SPEC[1]:
        logger.debug("fault injected at %s: exiting", point)
        os._exit(FAULT_EXIT_CODE)
