"""A stage's monthly budget: what its projects spent this calendar month (UTC), at list
prices, against ``TUNELOOP_LIMIT_MONTHLY_BUDGET_USD``.

The month's spend is each project's (``cost.month_spend``: every job of the runs started
this month, and the endpoints' hours this month), summed. Reading it costs SageMaker
Describe calls, so one reading serves for ``ttl_s``. Past the budget a new run is refused
with the figures (a 409, or a dropped dataset's refusal record), and a retraining run is
not started (the deployed run's history says why). Crossing it makes one notice a month.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .cost import month_spend
from .domain.run import Run
from .pricing import SHIPPED, PriceBook

# How many of a project's newest runs the month's spend reads (each costs Describe calls).
SPEND_RUNS = 50


class StageBudget:
    def __init__(
        self,
        service: Any,
        cost_of: Callable[[Run], dict[str, Any]],
        region: str,
        stage: str,
        budget_usd: int,
        clock: Callable[[], datetime],
        crossed: Callable[[dict[str, Any]], None] | None = None,
        ttl_s: float = 300.0,
        book: PriceBook = SHIPPED,
    ) -> None:
        self._book = book
        self._service = service
        self._cost_of = cost_of
        self._region = region
        self._stage = stage
        self.budget_usd = budget_usd
        self._clock = clock
        self._crossed = crossed
        self._ttl_s = ttl_s
        self._read: tuple[float, dict[str, Any]] | None = None

    def spend(self) -> dict[str, Any]:
        """``{month, usd, budget_usd, projects, complete, partial, prices_as_of}``."""
        if self._read and time.monotonic() - self._read[0] < self._ttl_s:
            return self._read[1]
        now = self._clock()
        total = {"usd": 0.0, "complete": True, "partial": False, "projects": 0}
        month, prices_as_of = f"{now:%Y-%m}", ""
        token: str | None = None
        while True:
            page = self._service.list_projects(100, token)
            for project in page.items:
                runs = self._service.runs.page(project=project.name, limit=SPEND_RUNS)
                spent = month_spend([s.run for s in runs.items], self._region, self._cost_of, now,
                                    more=runs.next_token is not None, book=self._book)  # fmt: skip
                total["usd"] += spent["usd"]
                total["complete"] = total["complete"] and spent["complete"]
                total["partial"] = total["partial"] or spent["partial"]
                total["projects"] += 1
                month, prices_as_of = spent["month"], spent["prices_as_of"]
            token = page.next_token
            if not token:
                break
        view = {"month": month, "usd": round(float(total["usd"]), 2), "budget_usd": self.budget_usd or None,
                "projects": total["projects"], "complete": total["complete"], "partial": total["partial"],
                "prices_as_of": prices_as_of}  # fmt: skip
        self._read = (time.monotonic(), view)
        return view

    def refusal(self) -> str | None:
        """Why a new run may not start (the budget is spent), or None."""
        if not self.budget_usd:
            return None
        spent = self.spend()
        if spent["usd"] < self.budget_usd:
            return None
        if self._crossed is not None:
            self._crossed(spent)
        return (
            f"stage {self._stage} has spent ${spent['usd']:.2f} of its ${self.budget_usd} budget for {spent['month']} "
            f"(list prices of {spent['prices_as_of']}); new runs start next month, or with a higher "
            "TUNELOOP_LIMIT_MONTHLY_BUDGET_USD"
        )
