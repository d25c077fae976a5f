"""The offline/online contract: the one package both sides import.

- ``keys``: the Redis key schema;
- ``spec``: the student's input spec (feature layouts, request -> tensors);
- ``history``: query-aware history selection (HMPPS Eq. 6);
- ``bundle``: the bundle format (typed manifest, writer, reader, verify, sha256);
- ``errors``: the domain errors;
- ``constants``: every value both sides must agree on.

It imports nothing from the rest of the project and nothing heavier than numpy.
"""
