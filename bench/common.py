"""What every benchmark writes next to its figures."""

from __future__ import annotations

import datetime
import os
import platform


def machine(note: str) -> dict:
    """Where and when: figures from a loaded machine are only comparable within the run."""
    return {"at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(), "python": platform.python_version(), "note": note}
