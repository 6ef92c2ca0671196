"""lbproxy: an asyncio consistent-hash load balancer that keeps its replica pool alive."""

__version__ = "0.1.0"
