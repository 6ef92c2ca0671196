"""The data plane: the public HTTP listener and its pooled connections to the replicas.

Nothing here awaits the backend or the control plane; the relay asks the pool for a
replica and writes bytes. ``relay`` owns client connections and exchanges, ``upstream``
the keep-alive connections to replicas.
"""
