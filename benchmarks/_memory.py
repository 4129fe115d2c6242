"""Peak resident memory of a benchmark's child process (Linux /proc), shared by the scripts."""

from __future__ import annotations


def status_mib(field: str) -> float:
    """A /proc/self/status field in MiB, e.g. "VmRSS" (now) or "VmHWM" (peak since the reset)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak() -> float:
    """Reset the peak (VmHWM), e.g. the one model loading left; returns the resident MiB now,
    the baseline to subtract from :func:`status_mib` ("VmHWM") afterwards."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return status_mib("VmRSS")
