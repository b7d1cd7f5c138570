from collections.abc import Sequence

def scan(
    raw: bytes, /
) -> tuple[bytes, str, bytes, int, str | None, int, int, bytes, int, bool] | None: ...
def scan_many(
    raws: Sequence[bytes],
    open_address: int,
    sha256_address: int,
    openssl_sha256_address: int,
    max_units: int,
    /,
) -> list[tuple[str, str | None, int, str | None, int, str | None, int, int, int, bool] | None]: ...
