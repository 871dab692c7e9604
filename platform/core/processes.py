"""Facts about other processes on this machine."""
from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user counts: it exists, we may not signal it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
