"""Operator views under /lbproxy/: metrics, the live dashboard and the OpenAPI document.

They read the control plane and the relay's counters; nothing on the request path
imports them.
"""
