"""Tamper evidence for tollgate.ledger: a hash chain per partition and signed checkpoints.

Every ledger record carries ``prev_hash``, the sha256 of the previous record's bytes in its partition
(``genesis_hash`` for the first). Every so often the ledger appends a ``ChainCheckpoint``: an Ed25519
signature over (topic, partition, count, head), where ``count`` records precede it and ``head`` is the
hash of the last of them. An auditor needs only the log and the public key: altering, removing,
inserting or reordering a record breaks the link after it, and rewriting the whole chain to hide that
needs the private key to sign the checkpoints again.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from eventlog import topics
from schemas.events import ChainCheckpoint
from schemas.ids import event_id_for

genesis_hash = "0" * 64


def record_hash(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


def checkpoint_message(partition: int, count: int, head: str, topic: str = topics.LEDGER) -> bytes:
    return f"tollgate-chain-checkpoint/v1/{topic}/{partition}/{count}/{head}".encode()


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_jwk(public_key: Ed25519PublicKey) -> dict[str, str]:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
        "kid": key_id_of(public_key),
        "use": "sig",
        "alg": "EdDSA",
    }


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """A PEM public key, a PEM private key (its public half), or a JWK (JSON) of an Ed25519 key."""
    text = data.strip()
    if text.startswith(b"{"):
        import json

        jwk = json.loads(text)
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            raise ValueError("the JWK is not an Ed25519 key")
        raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
        return Ed25519PublicKey.from_public_bytes(raw)
    if b"PRIVATE KEY" in text:
        private = serialization.load_pem_private_key(text, password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError("the key is not an Ed25519 key")
        return private.public_key()
    public = serialization.load_pem_public_key(text)
    if not isinstance(public, Ed25519PublicKey):
        raise ValueError("the key is not an Ed25519 key")
    return public


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The ledger's signing key; a new one is written (mode 600) when the file does not exist."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(pem)
    temporary.chmod(0o600)
    temporary.replace(path)
    return key


@dataclass(frozen=True, slots=True)
class Signer:
    key: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return key_id_of(self.key.public_key())

    def sign(self, partition: int, count: int, head: str) -> str:
        return base64.b64encode(self.key.sign(checkpoint_message(partition, count, head))).decode()

    def checkpoint(self, partition: int, chain: ChainHead, now: datetime) -> ChainCheckpoint:
        """The signed checkpoint of ``partition``'s chain as it stands (its ``prev_hash`` is set when
        it is appended, as for every ledger record)."""
        return ChainCheckpoint(
            event_id=event_id_for(f"checkpoint:{partition}:{chain.count}:{chain.head}", "chain.checkpoint"),
            occurred_at=now,
            org_id=chain.key,
            partition=partition,
            count=chain.count,
            head=chain.head,
            key_id=self.key_id,
            signature=self.sign(partition, chain.count, chain.head),
        )


def signature_valid(public_key: Ed25519PublicKey, partition: int, count: int, head: str, signature: str) -> bool:
    try:
        public_key.verify(base64.b64decode(signature), checkpoint_message(partition, count, head))
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(slots=True)
class ChainHead:
    """Where a partition's chain stands: records so far and the hash of the last one."""

    count: int = 0
    head: str = genesis_hash
    key: str = ""  # an organization id whose records land in this partition (to key a checkpoint)
    since_checkpoint: int = 0

    def advance(self, value: bytes, key: str) -> None:
        self.count += 1
        self.head = record_hash(value)
        self.key = key
        self.since_checkpoint += 1
