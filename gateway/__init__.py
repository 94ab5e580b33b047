"""The HTTP gateway: Litestar served by Granian."""
