"""``python -m lbproxy`` is the ``lbproxy`` command (images run it without console scripts)."""

from lbproxy.cli import main

main()
