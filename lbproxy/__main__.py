"""``python -m lbproxy`` is the ``lbproxy`` command (images run it without console scripts)."""

from lbproxy.cli import main

# Guarded: the ring build worker (multiprocessing, spawn) imports the main module again.
if __name__ == "__main__":
    main()
