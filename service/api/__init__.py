"""HTTP: the app and its lifespan, routes, request and response schemas, dependencies, body limits.

May import ``service.core``, ``service.infra`` and ``contract``; nothing imports it but the entry point.
"""
