"""The zoo server's bounds on work per request, shared by the server and the ``zoo serve`` command.

A request may name at most :data:`MAX_TASK_CLASSES` target classes (``--max-task-classes``); rankings and
votes run in a few slots at once, and at most :data:`QUEUE` more wait for one (``--queue``): past that the
server answers 503 with ``Retry-After`` at once instead of queueing without bound.
"""
from __future__ import annotations

MAX_TASK_CLASSES = 256  # Pets has 37 classes, CIFAR-100 100; a 1,000-class "task" is refused by default
QUEUE = 32  # requests waiting for a ranking (or a vote) slot: 20 busy clients fit, a flood gets 503
RANK_SLOTS = 2  # Wu-Palmer rankings at once (votes have their own --vote-workers slots)
RETRY_AFTER_S = 2
