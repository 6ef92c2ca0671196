"""Tooling around the balancer, shipped apart from it (``pip install . ./tools`` from a checkout).

``loadtest`` (``lbproxy loadtest``, the one load engine), ``analysis`` (``lbproxy analyze``)
and ``launcher`` (start a real ``lbproxy serve`` or the Compose stack; process and port
helpers for tests and benchmarks). None of it runs inside the balancer, so neither the
lbproxy distribution (``pip install .``) nor the balancer image carries it or its
dependencies (tqdm, matplotlib, jinja2 for the reports' templates in ``analysis/templates``).

Neither ``lbproxy`` nor ``lbproxy-tools`` is a name we hold on a public index, so
tools/pyproject.toml declares no requirement on lbproxy: one would make ``pip install ./tools``
alone fetch whatever a stranger published under that name (dependency confusion). Both come
from the checkout (``pip install . ./tools``; ``make install``), and an install of the tools
without the balancer stops here with that command.
"""

try:
    import lbproxy  # noqa: F401  (the tools drive and import the balancer's modules)
except ModuleNotFoundError as exc:
    if exc.name != "lbproxy":
        raise
    raise ImportError(
        "lbproxy-tools needs lbproxy, which it does not install for you (no public index "
        "holds it for us): from a checkout of lbproxy, run pip install . ./tools "
        "(or make install)"
    ) from exc
