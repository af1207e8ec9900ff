"""Signed heads: an Ed25519 signature over a run's head hash, so that an auditor with the public
key needs neither the database nor trust in whoever operates it.

A hash chain proves that a log is consistent; whoever can write the database can recompute it.
A signature by a key the database does not hold proves the head was this one when the service
exported it. Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public), as ``openssl``
and ``cryptography`` write them.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lrpilot.canonical import canonical_json, sha256_hex

ALGORITHM = "ed25519"


class SigningKeyError(ValueError):
    """A key file that is missing, unreadable or not an Ed25519 key."""

    trusted = False  # one of LRPILOT_TRUSTED_KEYS (else the signing key, or a given one)


class TrustedKeyError(SigningKeyError):
    trusted = True


def signed_message(
    header_hash: str, count: int, head_hash: str, imported: dict[str, Any] | None = None
) -> bytes:
    """What is signed: the head with what it is the head of, the bundle's header (the run's
    id, spec, labels and creation time) by its hash, and the count (a signature cannot be
    moved to another run, or to a prefix of this one). For a log that began as an import,
    also the trailer it was imported with (``imported``, its own signature included): the
    signer says which entries it took from elsewhere, and so which ones it decided."""
    doc: dict[str, Any] = {"count": count, "head_hash": head_hash, "header_hash": header_hash}
    if imported is not None:  # absent otherwise: what every other signature covers, unchanged
        doc["imported"] = imported
    return canonical_json(doc).encode()


def keygen(private_path: Path, public_path: Path) -> str:
    """Write a new key pair (the private key readable by its owner only); its key id."""
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private_path.touch(mode=0o600, exist_ok=False)
    private_path.write_bytes(private_pem)
    public_path.write_bytes(_public_pem(key.public_key()))
    return key_id(key.public_key())


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: Ed25519PublicKey) -> str:
    """A short name of a public key: the first 16 hex digits of the SHA-256 of its raw bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_hex(raw.hex())[:16]


def load_private_key(source: str | Path) -> Ed25519PrivateKey:
    """The key in a PEM file, or ``source`` itself when it is the PEM text (an environment
    variable filled from a secret store)."""
    text = str(source)
    pem_inline = text.lstrip().startswith("-----BEGIN")
    where = "LRPILOT_SIGNING_KEY's PEM text" if pem_inline else str(source)
    try:
        pem = text.encode() if pem_inline else Path(source).read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningKeyError(f"cannot read the signing key {where}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"{where} is not an Ed25519 private key (`lrpilot keygen` writes one)"
        )
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        return _public_key(Path(path).read_bytes(), str(path))
    except OSError as exc:
        raise SigningKeyError(f"cannot read the public key {path}: {exc}") from None


def _public_key(pem: bytes, where: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"cannot read the public key {where}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{where} is not an Ed25519 public key (`lrpilot keygen` writes one)")
    return key


_PEM_BLOCK = re.compile(rb"-----BEGIN [A-Z ]+-----.+?-----END [A-Z ]+-----", re.DOTALL)


def load_trusted_keys(source: str) -> list[Ed25519PublicKey]:
    """The public keys of ``LRPILOT_TRUSTED_KEYS``: PEM text (one block a key, as many as
    given), or PEM files separated by commas (each may hold several blocks)."""
    inline = "-----BEGIN" in source
    parts = [("LRPILOT_TRUSTED_KEYS's PEM text", source.encode())] if inline else []
    if not inline:
        for name in (p.strip() for p in source.split(",")):
            if name:
                try:
                    parts.append((name, Path(name).read_bytes()))
                except OSError as exc:
                    raise TrustedKeyError(f"cannot read the trusted key {name}: {exc}") from None
    keys = []
    try:
        for where, pem in parts:
            blocks = _PEM_BLOCK.findall(pem)
            if not blocks:
                raise SigningKeyError(f"{where} holds no PEM public key")
            keys += [_public_key(block, where) for block in blocks]
    except SigningKeyError as exc:
        raise TrustedKeyError(str(exc)) from None
    if not keys:
        raise TrustedKeyError("LRPILOT_TRUSTED_KEYS names no key")
    return keys


def sign(key: Ed25519PrivateKey, message: bytes) -> dict[str, str]:
    """The signature as the bundle's trailer carries it."""
    return {
        "algorithm": ALGORITHM,
        "key_id": key_id(key.public_key()),
        "value": base64.b64encode(key.sign(message)).decode(),
    }


def check(key: Ed25519PublicKey, message: bytes, signature: object) -> str | None:
    """None when ``signature`` is a valid signature of ``message`` by ``key``; else why not."""
    if not isinstance(signature, dict):
        return "the bundle is not signed (its trailer has no signature)"
    if signature.get("algorithm") != ALGORITHM:
        return f"unsupported signature algorithm {signature.get('algorithm')!r}"
    if signature.get("key_id") != key_id(key):
        return (
            f"signed by key {signature.get('key_id')!r}, not by the given public key "
            f"({key_id(key)})"
        )
    try:
        key.verify(base64.b64decode(str(signature.get("value")), validate=True), message)
    except (InvalidSignature, ValueError):
        return "the signature does not match the head (the bundle or its trailer was changed)"
    return None
