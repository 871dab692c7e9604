"""The model server's wire format: length-prefixed msgpack frames (never pickle), carrying the payload
dataclasses of inference.payloads, ModelConfig and inference errors. Arrays travel as their raw bytes
with dtype and shape (a 384-float vector is 1,536 bytes, audio samples are sent as they are)."""
from __future__ import annotations

import dataclasses
import socket
import struct
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from inference import errors, payloads
from inference.base import ModelConfig

MAX_FRAME = 256 * 2**20  # bytes: ten minutes of 16 kHz float audio is ~38 MB; anything far larger is a bug
_LENGTH = struct.Struct("!I")
_ARRAY, _TUPLE, _PATH = 1, 2, 3

# Every type that may cross: payloads by their class name, and the config of a model.
_TYPES: dict[str, type] = {
    name: value for name, value in vars(payloads).items()
    if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == payloads.__name__
}
_TYPES["ModelConfig"] = ModelConfig
_ERRORS: dict[str, type[errors.InferenceError]] = {
    name: value for name, value in vars(errors).items()
    if isinstance(value, type) and issubclass(value, errors.InferenceError)
}


class WireError(errors.InferenceError):
    """A frame that cannot be read: the connection is unusable and is closed."""

    code = "model_server_protocol"


class ConnectionClosed(errors.InferenceError):
    code = "model_server_unavailable"


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        array = value if value.flags.c_contiguous else np.ascontiguousarray(value)  # (which would make a 0-d array 1-d)
        header = msgpack.packb([array.dtype.str, list(array.shape)])
        return msgpack.ExtType(_ARRAY, _LENGTH.pack(len(header)) + header + array.tobytes())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return msgpack.ExtType(_TUPLE, packb(list(value)))
    if isinstance(value, Path):
        return msgpack.ExtType(_PATH, str(value).encode())
    if dataclasses.is_dataclass(value) and type(value).__name__ in _TYPES:
        return {"__t": type(value).__name__, **{f.name: getattr(value, f.name) for f in dataclasses.fields(value)}}
    if isinstance(value, errors.InferenceError):
        return {"__e": type(value).__name__ if type(value).__name__ in _ERRORS else "InferenceError",
                "message": str(value), "code": getattr(value, "code", "inference_error")}
    raise TypeError(f"Cannot send a {type(value).__name__} to or from the model server.")


def _ext(code: int, data: bytes) -> Any:
    if code == _ARRAY:
        (size,) = _LENGTH.unpack_from(data)
        dtype, shape = msgpack.unpackb(data[_LENGTH.size:_LENGTH.size + size])
        # A copy: the frame's buffer is reused, and callers may write into what they receive.
        return np.frombuffer(data, dtype=np.dtype(dtype), offset=_LENGTH.size + size).reshape(shape).copy()
    if code == _TUPLE:
        return tuple(unpackb(data))
    if code == _PATH:
        return Path(data.decode())
    return msgpack.ExtType(code, data)


def _hook(value: dict[str, Any]) -> Any:
    if "__t" in value:
        kind = _TYPES.get(value.pop("__t"))
        if kind is None:
            raise WireError("A frame names a type the model server does not know.")
        return kind(**value)
    if "__e" in value:
        kind = _ERRORS.get(value["__e"], errors.InferenceError)
        error = kind(value["message"])
        if value.get("code") and value["code"] != kind.code:
            error.code = value["code"]  # a subclass this side lacks keeps its code all the same
        return error
    return value


def packb(value: Any) -> bytes:
    return msgpack.packb(value, default=_default, use_bin_type=True, strict_types=True)


def unpackb(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, ext_hook=_ext, object_hook=_hook, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WireError(f"An unreadable frame: {exc}") from None


def send(sock: socket.socket, value: Any) -> None:
    body = packb(value)
    if len(body) > MAX_FRAME:
        raise WireError(f"A frame of {len(body)} bytes is over the {MAX_FRAME}-byte limit.")
    sock.sendall(_LENGTH.pack(len(body)) + body)


def receive(sock: socket.socket) -> Any:
    (size,) = _LENGTH.unpack(_exactly(sock, _LENGTH.size))
    if size > MAX_FRAME:
        raise WireError(f"A frame announces {size} bytes, over the {MAX_FRAME}-byte limit.")
    return unpackb(_exactly(sock, size))


def _exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, received = memoryview(buffer), 0
    while received < size:
        count = sock.recv_into(view[received:], size - received)
        if count == 0:
            raise ConnectionClosed("The model server connection closed.")
        received += count
    return bytes(buffer)
