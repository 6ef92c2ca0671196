"""The replica: a tiny aiohttp app that says who it is and answers heartbeats."""

from server_app.app import create_app

__all__ = ["create_app"]
