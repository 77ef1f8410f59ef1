"""``python -m sparsenet``: the same as the ``sparsenet`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
