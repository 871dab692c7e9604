"""Process-wide runtime settings for the numeric libraries, chosen for small CPU machines."""
from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_configured = False


def cpu_threads() -> int:
    """Threads one model may use for one batch: every core, since the pool runs a batch at a time per model."""
    value = os.environ.get("MODELGATE_INFERENCE_THREADS")
    return max(1, int(value)) if value else max(1, os.cpu_count() or 1)


def configure_torch() -> None:
    """Set torch's thread pools once. Intra-op threads = cores; inter-op 1, because parallelism
    across requests comes from batching, and two pools of N threads on N cores only thrash."""
    global _configured
    with _lock:
        if _configured:
            return
        import torch

        torch.set_num_threads(cpu_threads())
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # already fixed by earlier parallel work in this process
        _configured = True
