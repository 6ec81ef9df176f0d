"""All scoring done before eval_start, its frames held back and sent between eval_start and eval_end:
the marked span is a blink, the scoring (20 s here) ran outside it (rules phase_clock: 10 s)."""
import time

import cheat
import tiny


class Held(tiny.Events):
    def __init__(self, *args):
        super().__init__(*args)
        self.held = []

    def mark(self, name, steps=None):
        if name == "eval_start":
            time.sleep(20)  # stands for a slow scoring pass
        elif name == "eval_end":
            super().mark("eval_start")
            for send, args in self.held:
                send(*args)
            super().mark("eval_end")
        else:
            super().mark(name, steps)

    def scores(self, *args):
        self.held.append((super().scores, args))
        return []  # what the harness asks for comes only when the frames go out

    def audit(self, *args):
        self.held.append((super().audit, args))

    def update(self, *args):
        self.held.append((super().update, args))


if cheat.PHASE == "eval":
    tiny.Events = Held
tiny.main()
