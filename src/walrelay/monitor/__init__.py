"""Health of the source: thresholds, the ``walrelay doctor`` review."""

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
