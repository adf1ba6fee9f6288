"""What a head costs besides its wall time: the parameters it trains and the peak memory of its fit.

``trained_parameters(module)`` counts the parameters that require a gradient (a linear probe: D·C + C; NMTune's head:
its MLP, scale and classifier; full fine-tuning: the whole backbone and the classifier). ``PeakMemory`` measures a
fit's peak memory above what was in use when it started: on CUDA the allocator's peak
(``torch.cuda.max_memory_allocated``), elsewhere the process's resident set sampled every ``interval`` seconds by a
thread (psutil), so a peak shorter than the interval can be missed. Heads trained in one batch share one
measurement, as they share the batch's wall time.
"""
from __future__ import annotations

import threading

import psutil
import torch

MB = 2 ** 20


def trained_parameters(module: torch.nn.Module) -> int:
    """The number of parameters of ``module`` that training updates (``requires_grad``)."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


class PeakMemory:
    """``with PeakMemory(device) as peak: …`` then ``peak.megabytes``: the peak memory above the start, in MiB."""

    def __init__(self, device: torch.device | str = "cpu", *, interval: float = 0.005):
        self.device, self.interval = torch.device(device), interval
        self.megabytes = float("nan")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.megabytes = (torch.cuda.max_memory_allocated(self.device) - self.start) / MB
            return
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        self.megabytes = (self.peak - self.start) / MB
