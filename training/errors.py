"""Domain errors raised by offline stages (defined in ``service.errors`` so both sides share them)."""

from service.errors import ArtifactMismatch, BundleError, HmppsError, InputError

__all__ = ["ArtifactMismatch", "BundleError", "HmppsError", "InputError"]
