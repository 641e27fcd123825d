"""Peak memory of one forward: ``torch.cuda.max_memory_allocated`` and, when ``pynvml`` imports, NVML.

The allocator peak counts tensors only; NVML sees the whole device (context, allocator cache, other
processes), so it is sampled from a background thread while the forward runs and reported as the peak of
``used`` memory. Both are null on CPU.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Optional

import torch


def nvml_handle(device: torch.device) -> Any:
    """An NVML device handle for ``device`` (None when pynvml is missing or NVML fails to start)."""
    if device.type != "cuda":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # noqa: BLE001 - no NVML means "report null", never a failure
        return None


def nvml_used_bytes(handle: Any) -> Optional[int]:
    if handle is None:
        return None
    import pynvml

    return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)


class NvmlPeakSampler:
    """Context manager: polls NVML ``used`` every ``interval_ms`` in a thread; ``peak`` after exit (or None)."""

    def __init__(self, handle: Any, interval_ms: float = 1.0):
        self.handle = handle
        self.interval = interval_ms / 1000.0
        self.peak: Optional[int] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _poll(self) -> None:
        while not self._stop.is_set():
            used = nvml_used_bytes(self.handle)
            if used is not None and (self.peak is None or used > self.peak):
                self.peak = used
            time.sleep(self.interval)

    def __enter__(self) -> "NvmlPeakSampler":
        if self.handle is not None:
            self.peak = nvml_used_bytes(self.handle)
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            used = nvml_used_bytes(self.handle)
            if used is not None and (self.peak is None or used > self.peak):
                self.peak = used
