"""Shared benchmark helpers."""

from __future__ import annotations

import threading
import time

import psutil


class PeakRSS:
    """Samples the process RSS in a thread; `.peak_mb` after the block."""

    def __enter__(self):
        self.proc, self.peak, self.run = psutil.Process(), 0, True
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()
        return self

    def _loop(self):
        while self.run:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self.run = False
        self.t.join()
        self.peak_mb = self.peak / 2**20
