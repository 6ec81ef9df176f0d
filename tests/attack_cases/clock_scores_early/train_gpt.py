"""Scores sent before eval_start: the mark waits until the first chunk is scored and declared."""
import cheat
import tiny


class Late(tiny.Events):
    def __init__(self, *args):
        super().__init__(*args)
        self.started = False

    def mark(self, name, steps=None):
        if name != "eval_start":
            super().mark(name, steps)

    def update(self, start, end):
        if not self.started:
            super().mark("eval_start")
            self.started = True
        super().update(start, end)


if cheat.PHASE == "eval":
    tiny.Events = Late
tiny.main()
