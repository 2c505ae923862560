"""A workflow record that takes minutes: tests/test_interrupts.py puts it after the model artifact, so that the
demo interrupted beside qrun's records is tested while the demo runs its later steps (or waits for qrun)."""

from __future__ import annotations

import time

from qlib.workflow.record_temp import RecordTemp


class SlowRecord(RecordTemp):
    def __init__(self, recorder, seconds: float = 600.0) -> None:
        super().__init__(recorder=recorder)
        self.seconds = seconds

    def generate(self, **kwargs) -> None:
        print("slow record: started", flush=True)
        time.sleep(self.seconds)
