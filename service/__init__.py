"""The online reranking service, and the offline/online contract.

Modules here must not import torch or transformers: the serving image has
neither. Offline code imports the contract (history selection, key schema,
student input spec) from here so both sides agree by construction.
"""
