"""The HTTP API by area: rerank, feedback, ops (health, info, metrics), admin."""
