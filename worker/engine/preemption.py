"""Preemption: which running jobs to pause, at a step boundary, so a higher-priority job fits.

A paused job keeps everything it needs to go on (latents, its scheduler's state, its
generators) in the engine's memory, so its images are the ones an uninterrupted run gives."""

from app.core.jobs import JobParams
from worker.engine.admission import Admission, rank
from worker.engine.state import JobState


def to_pause(active: list[JobState], admission: Admission, newcomer: JobParams) -> list[JobState]:
    """The fewest lower-priority jobs of the newcomer's group to pause so that it fits: lowest
    priority first, then those with the most steps left (the least work set aside). Nothing
    if pausing all of them would not make room."""
    group = admission.group(newcomer)
    lower = [
        s
        for s in active
        if admission.group(s.request.params) == group and rank(s.request.params) > rank(newcomer)
    ]
    lower.sort(key=lambda s: (-rank(s.request.params), s.index - s.total_steps))
    used = admission.used.get(group, 0)
    cost = admission.family.cost(newcomer)
    chosen: list[JobState] = []
    for state in lower:
        if used + cost <= admission.max_cost or not used:
            break
        chosen.append(state)
        used -= admission.family.cost(state.request.params)
    fits = used + cost <= admission.max_cost or not used
    return chosen if fits else []
