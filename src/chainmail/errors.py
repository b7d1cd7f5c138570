"""chainmail's exceptions: one root, each with a machine ``code``.

The HTTP API returns ``code`` unchanged in its RFC 9457 problem documents, so
the codes below are part of the public contract (DESIGN §8).

    Error
    ├── VerificationError          the input is wrong; retrying will not help
    │   ├── InvalidMessage         format, signature, size, feed order, fork, content rules
    │   ├── ProofError             a Merkle proof, checkpoint or block does not verify
    │   └── DecryptionError        a channel box does not open (deliberately opaque)
    ├── Rejected                   a well-formed message the node's rules refuse
    ├── Unauthorized               a request signature is missing, stale or replayed
    ├── NotFound                   no such message, tx, block, blob, feed or key
    ├── RateLimited                too much, too fast
    ├── KeystoreError              a key file is missing, malformed or the passphrase is wrong
    └── OperationalError           the node itself failed; safe to retry
        ├── StorageError
        ├── LogError
        └── DeliveryError
"""

from __future__ import annotations

from typing import ClassVar, Final

__all__ = [
    "DecryptionError",
    "DeliveryError",
    "Error",
    "InvalidMessage",
    "InvalidRequest",
    "KeystoreError",
    "LogError",
    "NotFound",
    "OperationalError",
    "ProofError",
    "RateLimited",
    "Rejected",
    "StorageError",
    "Unauthorized",
    "VerificationError",
]

#: HTTP status of each machine code (DESIGN §8).
STATUS_BY_CODE: Final[dict[str, int]] = {
    "invalid_format": 400,
    "invalid_signature": 400,
    "too_large": 413,
    "unsupported_media_type": 415,
    "fork": 409,
    "out_of_order": 409,
    "unknown_tx": 422,
    "tx_closed": 409,
    "not_a_party": 403,
    "not_admitted": 403,
    "key_rotated": 403,
    "unauthorized": 401,
    "not_found": 404,
    "rate_limited": 429,
    "request_timeout": 408,
    "invalid_proof": 422,
    "decryption_failed": 400,
    "keystore": 400,
    "storage": 503,
    "log": 503,
    "delivery": 503,
    "unavailable": 503,
    "internal": 500,
}


class Error(Exception):
    """Root of every chainmail error; ``code`` is the machine-readable reason."""

    code: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            # An instance may narrow the class code (InvalidMessage("…", code="fork")).
            self.code = code  # type: ignore[misc]

    @property
    def status(self) -> int:
        """The HTTP status this error maps to."""
        return STATUS_BY_CODE.get(self.code, 500)

    def diagnostics(self) -> str:
        """A one-line human explanation, as the CLI prints it."""
        return f"{self.code}: {self.detail}"

    def problem(self) -> dict[str, object]:
        """The RFC 9457 problem document for this error."""
        return {
            "type": f"https://chainmail.dev/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }


class VerificationError(Error):
    """The input does not verify; resubmitting it unchanged will fail again."""

    code = "invalid_format"
    title = "Verification failed"


class InvalidMessage(VerificationError):
    """A message breaks the SSB format, its signature, the feed rules or node policy.

    ``code`` is one of ``invalid_format``, ``invalid_signature``, ``too_large``,
    ``fork``, ``out_of_order``.
    """

    code = "invalid_format"
    title = "Invalid message"


class InvalidRequest(InvalidMessage):
    """A request's parameters or body are malformed (a bad id, a number out of range)."""

    title = "Invalid request"


class ProofError(VerificationError):
    """A Merkle proof, checkpoint, signed note or block failed to verify."""

    code = "invalid_proof"
    title = "Proof does not verify"


class DecryptionError(VerificationError):
    """A channel box could not be opened. Opaque on purpose: no reason is given."""

    code = "decryption_failed"
    title = "Decryption failed"


class Rejected(Error):
    """A valid message that the node's transaction or identity rules refuse.

    ``code`` is one of ``unknown_tx``, ``tx_closed``, ``not_a_party``,
    ``not_admitted``, ``key_rotated``.
    """

    code = "not_a_party"
    title = "Rejected by node rules"


class Unauthorized(Error):
    """A request signature is missing, malformed, stale or replayed."""

    code = "unauthorized"
    title = "Unauthorized"


class NotFound(Error):
    """The thing asked for does not exist (yet)."""

    code = "not_found"
    title = "Not found"


class RateLimited(Error):
    """Too many requests; ``retry_after`` says how many seconds to wait."""

    code = "rate_limited"
    title = "Rate limited"

    def __init__(self, detail: str, *, retry_after: float = 1.0) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class KeystoreError(Error):
    """A key file is missing or malformed, or its passphrase is wrong."""

    code = "keystore"
    title = "Keystore error"


class OperationalError(Error):
    """The node failed to do its part; the same request may succeed later."""

    code = "internal"
    title = "Node error"


class StorageError(OperationalError):
    code = "storage"
    title = "Storage error"


class LogError(OperationalError):
    code = "log"
    title = "Log error"


class DeliveryError(OperationalError):
    code = "delivery"
    title = "Delivery error"
