"""Offline pipeline: datasets, first-stage retrieval, metrics, teacher training."""
