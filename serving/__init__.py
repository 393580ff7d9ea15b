"""The HTTP layer: the Litestar app that channels, analysts and admins call (API.md)."""
