from collections.abc import Callable

def configure(unchanged: object) -> None: ...
def decode_tuple(buf: bytes, pos: int, ncols: int) -> tuple[tuple[object, ...], int] | None: ...
def encode_object(
    names: tuple[bytes, ...],
    kinds: bytes,
    encoders: tuple[Callable[[bytes], bytes] | None, ...],
    row: tuple[object, ...],
    indexes: tuple[int, ...] | None,
) -> bytes | None: ...
def encode_inserts(
    frames: list[bytes],
    start: int,
    limit: int,
    spec: tuple[object, ...],
    head: bytes,
    seq: int,
    tail: bytes,
) -> list[tuple[bytes, bytes, str]]: ...
