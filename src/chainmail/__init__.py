"""chainmail: blockchain-style messaging with verifiable proofs.

Every participant signs each message into its own append-only feed (SSB classic
format); a node routes, logs under RFC 9162 Merkle trees, seals closed
transactions into signed blocks and answers look-ups with proofs.
"""

from chainmail.errors import (
    DecryptionError,
    Error,
    InvalidMessage,
    NotFound,
    ProofError,
    Rejected,
)

__version__ = "0.1.0"

__all__ = [
    "DecryptionError",
    "Error",
    "InvalidMessage",
    "NotFound",
    "ProofError",
    "Rejected",
    "__version__",
]
