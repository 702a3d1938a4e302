"""Admission: which jobs may join the engine now, counted per group (latent shape).

A group's jobs share a forward, so each group may hold up to the engine's `max_cost`; a group
with nothing in it takes any one job, however big (it then runs alone). Jobs paused for a
higher priority keep their room against jobs of their own priority or lower: they resume
first."""

from app.core.jobs import PRIORITIES, JobParams
from worker.families.base import Family


def rank(params: JobParams) -> int:
    """0 for high priority, then normal, then low."""
    return PRIORITIES.index(params.priority)


class Admission:
    """Cost taken per group (see `Engine.admission`)."""

    def __init__(self, family: Family, max_cost: int) -> None:
        self.family = family
        self.max_cost = max_cost
        self.used: dict[tuple, int] = {}
        self.reserved: dict[tuple, list[tuple[int, int]]] = {}  # paused: (rank, cost)

    @staticmethod
    def group(params: JobParams) -> tuple:
        """Every family batches jobs of one size together (its states' `group` adds the
        family)."""
        return (params.height, params.width)

    def add(self, params: JobParams) -> None:
        """Count a job already held."""
        group = self.group(params)
        self.used[group] = self.used.get(group, 0) + self.family.cost(params)

    def reserve(self, params: JobParams) -> None:
        """Keep room for a paused job against jobs of its priority or lower."""
        group = self.group(params)
        self.reserved.setdefault(group, []).append((rank(params), self.family.cost(params)))

    def take(self, params: JobParams) -> bool:
        """Whether the job fits its group now; counts it if so."""
        group, cost = self.group(params), self.family.cost(params)
        used = self.used.get(group, 0)
        held = used + sum(c for r, c in self.reserved.get(group, []) if r <= rank(params))
        if held and held + cost > self.max_cost:
            return False
        self.used[group] = used + cost
        return True
