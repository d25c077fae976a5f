"""The online reranking service: HTTP API, ranking on the request path, Redis, metrics.

Modules here must not import torch or transformers: the serving image has
neither. What the service shares with the offline side (key schema, student
input spec, history selection, bundle format, arms file, product rows) lives
in ``contract``, which both import; the layer rules are in tests/test_layers.py.
"""
