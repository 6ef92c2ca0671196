"""The control plane: who is in the pool, whether they are healthy, and keeping it at target.

``pool`` holds members and the ring (no awaits), ``health`` probes them, ``reconcile``
launches and replaces through a backend, ``admin`` is the HTTP face of /rep /add /rm, and
``events`` the bounded log operators read.
"""
