"""Tooling around the balancer, shipped apart from it (``pip install ./tools`` from a checkout).

``loadtest`` (``lbproxy loadtest``, the one load engine), ``analysis`` (``lbproxy analyze``)
and ``launcher`` (start a real ``lbproxy serve`` or the Compose stack; process and port
helpers for tests and benchmarks). None of it runs inside the balancer, so neither the
lbproxy distribution (``pip install .``) nor the balancer image carries it or its
dependencies (tqdm, matplotlib, jinja2 for the reports' templates in ``analysis/templates``).
"""
