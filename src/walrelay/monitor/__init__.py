"""Health of the source: thresholds, the ``walrelay doctor`` review.

The exports resolve lazily (PEP 562): ``walrelay run`` imports the monitor's
modules it uses (``walrelay.monitor.service``, ``.thresholds``) without the
doctor's.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from walrelay.monitor.doctor import (
        DoctorError,
        Facts,
        Finding,
        Report,
        diagnose,
        doctor_command,
        gather,
        run_doctor,
    )
    from walrelay.monitor.thresholds import DEFAULT_THRESHOLDS, Severity, Thresholds

_FROM_THRESHOLDS = {"DEFAULT_THRESHOLDS", "Severity", "Thresholds"}

__all__ = [
    "DEFAULT_THRESHOLDS",
    "DoctorError",
    "Facts",
    "Finding",
    "Report",
    "Severity",
    "Thresholds",
    "diagnose",
    "doctor_command",
    "gather",
    "run_doctor",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = "thresholds" if name in _FROM_THRESHOLDS else "doctor"
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
