"""Wire types: events, commands and API bodies (msgspec Structs, JSON on the wire)."""
