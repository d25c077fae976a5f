"""The ranking itself: the bundle runtime (ONNX sessions), scoring one request, bundles and arms
loaded for serving, product upserts through the bundle's encoder.

May import ``service.infra`` and ``contract``; knows nothing of HTTP.
"""
