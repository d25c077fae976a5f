"""Tests of the deployment files: Dockerfile, compose, Prometheus rules."""
