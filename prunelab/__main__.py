"""``python -m prunelab``: see prunelab/cli.py."""

from prunelab.cli import main

if __name__ == "__main__":
    main()
