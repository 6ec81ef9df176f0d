"""train_end sent at step 40, and training goes on well past the allowance (rules phase_clock: 15 s)."""
import time

import cheat
import tiny

LIVE = []
average = tiny.average_gradients


class Early(tiny.Events):
    """Sends train_end when the gradient hook says so, and drops the real one at the end."""
    def __init__(self, *args):
        super().__init__(*args)
        LIVE.append(self)

    def mark(self, name, steps=None):
        if name != "train_end" or steps == 40:
            super().mark(name, steps)


def counted(model, world, step=[0]):
    average(model, world)
    step[0] += 1
    if step[0] == 40:
        LIVE[0].mark("train_end", steps=40)
        time.sleep(20)  # stands for the steps it keeps taking after the mark


if cheat.PHASE == "train":
    tiny.STEPS, tiny.average_gradients, tiny.Events = 60, counted, Early
tiny.main()
