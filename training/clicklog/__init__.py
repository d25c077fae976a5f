"""The learning loop's data: served rankings joined with the clicks, dwell and purchases that followed them.

Rooms: ``logs`` (read the streams), ``labels`` (join and label), ``propensities``
(position bias), ``from_logs`` (the ``hmpps data from-logs`` job and its report).

Three streams feed it, read from Redis or from a JSONL export of them
(``hmpps data export-logs``): the served rankings (``contract/served.py``), the
feedback events of ``/feedback`` (impressions, clicks, dwell) and the shop's
events of ``POST /events`` (purchases, add-to-cart, clicks). Feedback and shop
events carry the request id of the rerank they follow; that is the join, kept
only within ``window_s`` after the ranking was served.

Labels follow the cascade click model: a clicked item is positive; an item
skipped above the last click was examined and passed over, so negative; an
item below the last click may never have been examined, so it is unobserved
and carries no label. A ranking without a click gives no labels. Positives are
graded: a purchase (or add-to-cart) above an efficient click (dwell > 5 s)
above a plain click.

Every item keeps its served position, so a learner can correct for position
bias. ``estimate_propensities`` fits the position-based model (a click needs
the position to be examined and the item to be attractive) by EM over every
shown ranking, the regression-EM of Wang et al. (WSDM 2018) with one
attractiveness per (query, product): it is identifiable because the same item
is shown at different positions by different arms and requests.
"""
