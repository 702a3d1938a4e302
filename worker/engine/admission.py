"""Admission: which jobs may join the engine now, counted per group (latent shape).

A group's jobs share a forward, so each group may hold up to the engine's `max_cost`; a group
with nothing in it takes any one job, however big (it then runs alone)."""

from app.core.jobs import JobParams
from worker.families.base import Family


class Admission:
    """Cost taken per group (see `Engine.admission`)."""

    def __init__(self, family: Family, max_cost: int) -> None:
        self.family = family
        self.max_cost = max_cost
        self.used: dict[tuple, int] = {}

    @staticmethod
    def _group(params: JobParams) -> tuple:
        # Every family batches jobs of one size together (its states' `group` adds the family).
        return (params.height, params.width)

    def add(self, params: JobParams) -> None:
        """Count a job already held."""
        group = self._group(params)
        self.used[group] = self.used.get(group, 0) + self.family.cost(params)

    def take(self, params: JobParams) -> bool:
        """Whether the job fits its group now; counts it if so."""
        group, cost = self._group(params), self.family.cost(params)
        used = self.used.get(group, 0)
        if used and used + cost > self.max_cost:
            return False
        self.used[group] = used + cost
        return True
