"""What the service runs on: settings, Redis connections, the feature store, live histories,
the served-ranking log, Prometheus metrics.

May import ``contract`` only.
"""
