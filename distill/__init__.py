"""Distillation of the HMPPS teacher into the ONNX student bundle the service loads (App. A.3)."""
