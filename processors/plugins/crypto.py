"""``encrypt`` / ``decrypt``: authenticated frame encryption (AES-256-GCM).

An encrypted frame is a codec frame: its payload is ``nonce || ciphertext || tag`` and its
codec is ``aes-gcm`` (``aes-gcm+<inner>`` if it was already compressed), with the original
dtype and shape recorded, so every pvaflow stage and the PVA mirror can carry it unchanged.
The uniqueId, dtype, shape and inner codec are authenticated as associated data: changing a
byte of the payload *or* of those headers makes decryption fail, and the runner sends the
frame to the dead-letter topic.

The key (16, 24 or 32 bytes) comes from ``{"key_file": path}`` or from the environment
variable named by ``{"key_env": NAME}`` (default ``PVAFLOW_FRAME_KEY``), as raw bytes, hex or
base64. It is never logged or reported.

What is encrypted is the payload as carried: a compressed frame (``bslz4``, ``lz4``, ``blosc``)
is sealed as its compressed bytes, never decompressed (cheaper, and ciphertext would not
compress anyway), and ``decrypt`` gives back exactly those bytes with their codec. Neither
plugin decodes pixels. Run both stages with ``--output-codec same`` (the default): an
encrypted frame cannot be decoded, so any other output codec sends it to the dead-letter
topic. ``python -m pvaflow.processors.plugins.crypto KEYFILE``
writes a fresh random key.
"""

from __future__ import annotations

import base64
import binascii
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pvaflow.errors import ConfigError
from pvaflow.frame import Codec, Frame
from pvaflow.plugin import Processor, StatValue

CODEC = "aes-gcm"
KEY_ENV = "PVAFLOW_FRAME_KEY"
NONCE = 12


class CryptoKeyError(ConfigError, ValueError):
    """No usable key; the message never contains key material."""


def parse_key(raw: bytes) -> bytes:
    """Hex or base64 text (what a Secret usually holds), else the raw bytes themselves."""
    text = raw.strip()
    decoders = (binascii.unhexlify, lambda t: base64.b64decode(t, validate=True))
    for decode in decoders:
        try:
            key = decode(text)
        except (binascii.Error, ValueError):
            continue
        if len(key) in (16, 24, 32):
            return key
    if len(raw) in (16, 24, 32):
        return raw
    raise CryptoKeyError("key must be 16, 24 or 32 bytes (raw, hex or base64)")


def load_key(config: dict[str, Any]) -> bytes:
    if config.get("key_file"):
        path = Path(str(config["key_file"])).expanduser()
        try:
            return parse_key(path.read_bytes())
        except OSError as exc:
            raise CryptoKeyError(f"cannot read key file {path}: {exc.strerror}") from None
    name = str(config.get("key_env") or KEY_ENV)
    value = os.environ.get(name)
    if not value:
        raise CryptoKeyError(f"no key: set {{\"key_file\": ...}} or environment variable {name}")
    return parse_key(value.encode())


def _aad(frame_uid: int, dtype: np.dtype[Any], shape: tuple[int, ...], inner: str) -> bytes:
    return f"pvaflow-aes-gcm/1|{frame_uid}|{np.dtype(dtype).str}|{shape}|{inner}".encode()


class _Crypto(Processor):
    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self._aes = AESGCM(load_key(self.config))
        self.config.pop("key", None)  # never keep key material in reported config
        self.reset_stats()

    def reset_stats(self) -> None:
        self.n_frames = 0
        self.n_bytes = 0
        self.seconds = 0.0

    def get_stats(self) -> dict[str, StatValue]:
        return {"nFrames": self.n_frames, "nBytes": self.n_bytes,
                "mbPerSecond": self.n_bytes / self.seconds / 1e6 if self.seconds else 0.0}

    def _count(self, t0: float, nbytes: int) -> None:
        self.n_frames += 1
        self.n_bytes += nbytes
        self.seconds += time.perf_counter() - t0


class Encrypt(_Crypto):
    def process(self, frame: Frame) -> Frame:
        t0 = time.perf_counter()
        inner = frame.codec.name if frame.codec else ""
        if inner.split("+")[0] == CODEC:
            raise ValueError(f"frame {frame.unique_id} is already encrypted")
        dtype, shape = frame.dtype, frame.shape
        usize = frame.codec.uncompressed_size if frame.codec else frame.array.nbytes
        nonce = os.urandom(NONCE)
        data = np.ascontiguousarray(frame.array).view(np.uint8).reshape(-1)
        sealed = self._aes.encrypt(nonce, data.tobytes(), _aad(frame.unique_id, dtype, shape,
                                                                inner))
        payload = np.frombuffer(nonce + sealed, dtype=np.uint8)
        name = f"{CODEC}+{inner}" if inner else CODEC
        out = replace(frame, array=payload, codec=Codec(name, dtype, shape, usize),
                      origin_codec=None)
        self._count(t0, data.nbytes)
        return out


class Decrypt(_Crypto):
    def process(self, frame: Frame) -> Frame:
        t0 = time.perf_counter()
        codec = frame.codec
        if codec is None or codec.name.split("+")[0] != CODEC:
            raise ValueError(f"frame {frame.unique_id} is not {CODEC}-encrypted")
        inner = codec.name.partition("+")[2]
        raw = frame.array.view(np.uint8).reshape(-1).tobytes()
        try:
            plain = self._aes.decrypt(raw[:NONCE], raw[NONCE:],
                                      _aad(frame.unique_id, codec.dtype, codec.shape, inner))
        except InvalidTag:
            raise ValueError(f"frame {frame.unique_id} failed authentication "
                             "(tampered, or encrypted with another key)") from None
        if inner:
            array = np.frombuffer(plain, dtype=np.uint8)
            new_codec: Codec | None = Codec(inner, codec.dtype, codec.shape,
                                            codec.uncompressed_size)
        else:
            array = np.frombuffer(plain, dtype=codec.dtype).reshape(codec.shape)
            new_codec = None
        out = replace(frame, array=array, codec=new_codec, origin_codec=None)
        self._count(t0, len(plain))
        return out


def generate_key(path: str | Path) -> None:
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(AESGCM.generate_key(bit_length=256).hex() + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m pvaflow.processors.plugins.crypto KEYFILE  (writes a new key)")
    generate_key(sys.argv[1])
