"""The online reranking service, in three rooms: ``api`` (HTTP) -> ``core`` (ranking) -> ``infra``
(Redis, settings, metrics); each imports only the rooms to its right and ``contract``.

Modules here must not import torch or transformers: the serving image has
neither. What the service shares with the offline side (key schema, student
input spec, history selection, bundle format, arms file, product rows) lives
in ``contract``, which both import; the layer rules are in tests/test_layers.py.
"""
