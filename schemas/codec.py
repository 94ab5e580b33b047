"""Encoders and decoders, built once and reused (msgspec's advice for speed)."""

from __future__ import annotations

import msgspec

from schemas.commands import LedgerCommand
from schemas.events import AnyEvent

_encoder = msgspec.json.Encoder()
_event_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)
_command_decoder: msgspec.json.Decoder[LedgerCommand] = msgspec.json.Decoder(LedgerCommand)


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode_event(data: bytes) -> AnyEvent:
    return _event_decoder.decode(data)


def decode_command(data: bytes) -> LedgerCommand:
    return _command_decoder.decode(data)
