"""The wall-clock budget (train.max_minutes) over a run's whole life, resumes included.

The seconds spent are saved in every checkpoint (trainer_state "elapsed_s"), so a resumed run
continues the same schedule and stops at the same total time instead of starting a fresh budget.
"""

from __future__ import annotations

import time


class BudgetClock:
    """Seconds spent so far (earlier processes + this one) and the share of the budget they are."""

    def __init__(self, budget_s: float, elapsed_before: float = 0.0):
        self.budget_s = budget_s  # 0 = no budget
        self.elapsed_before = elapsed_before
        self.started = time.perf_counter()
        self.steps = 0  # steps finished by this process

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def step_done(self) -> None:
        self.steps += 1

    def used_by_next_step(self) -> float:
        """Share of the budget spent when the coming step ends (0 without a budget, at most 1).

        The coming step is assumed to take this process's mean step time (evaluations and
        checkpoints included); a result of 1 makes it the last step, run at the LR floor.
        """
        if self.budget_s <= 0:
            return 0.0
        this_process = time.perf_counter() - self.started
        step_s = this_process / self.steps if self.steps else 0.0
        return min(1.0, (self.elapsed_before + this_process + step_s) / self.budget_s)
