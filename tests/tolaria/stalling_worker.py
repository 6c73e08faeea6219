"""One rank of ``torchrun ... stalling_worker.py grow ARGS``: ``esper grow ARGS``, but one rank
stalls.

The rank ``ESPER_TEST_STALL_RANK`` stops answering (sleeps for an hour, never
entering another collective) when it is about to start epoch
``ESPER_TEST_STALL_EPOCH``, after writing the time it stalled to
``ESPER_TEST_STALL_MARK``. The other ranks run ``esper grow`` unchanged.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from esper.cli import main
from esper.tolaria.trainer import Trainer

if int(os.environ["RANK"]) == int(os.environ["ESPER_TEST_STALL_RANK"]):
    stall_epoch = int(os.environ["ESPER_TEST_STALL_EPOCH"])
    run_epoch = Trainer.run_epoch

    def stalling_run_epoch(self: Trainer):  # type: ignore[no-untyped-def]
        if self.epoch + 1 == stall_epoch:
            Path(os.environ["ESPER_TEST_STALL_MARK"]).write_text(repr(time.time()))
            time.sleep(3600)
        return run_epoch(self)

    Trainer.run_epoch = stalling_run_epoch  # type: ignore[method-assign]

sys.exit(main(sys.argv[1:]))
