"""Domain errors shared by the service and the offline stages.

The CLI turns these into one readable line and exit code 2; the service maps
them to HTTP in its one exception handler. Anything else is a bug.
"""


class HmppsError(Exception):
    """A user-facing error: bad input, mismatched artifacts, nothing valid to do."""

    exit_code = 2


class InputError(HmppsError):
    """An input file or directory is missing, malformed or of the wrong kind."""


class Unprocessable(InputError):
    """A well-formed request that breaks a configured rule (too many candidates, an image not allowed)."""

    http_status = 422


class ArtifactMismatch(HmppsError):
    """An input artifact belongs to a different dataset or schema version."""


class BundleError(HmppsError):
    """A student bundle is missing a file, fails its checksum, or is malformed."""


class Unauthorized(HmppsError):
    """An admin call without the right token."""

    http_status = 401


class Forbidden(HmppsError):
    """An admin call while admin endpoints are disabled (no token configured)."""

    http_status = 403


class NotPublished(HmppsError):
    """A write into a bundle version the store does not hold as published: publish would later overwrite
    it (vectors replaced, stored content hashes kept), so such a write is refused whoever makes it."""

    http_status = 409


class Unavailable(HmppsError):
    """The service cannot do this right now (not ready, admin disabled, reload failed)."""

    http_status = 503


def http_status(e: HmppsError) -> int:
    if isinstance(e, (Unauthorized, Forbidden, NotPublished, Unavailable, Unprocessable)):
        return e.http_status
    if isinstance(e, BundleError):
        return 503
    return 400
