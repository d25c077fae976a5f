"""The learning loop's data: served rankings joined with the clicks, dwell and purchases that followed them.

Rooms: ``logs`` (read the three streams, from Redis or a JSONL export), ``labels`` (join feedback
and events to the ranking they followed, label by the cascade click model), ``propensities``
(position bias, by EM over the position-based model), ``from_logs`` (the ``hmpps data
from-logs`` job and its report). Each module's docstring says its part of the method.
"""
