"""`python -m attngan ...`: the same command line as the `attngan` script."""

from attngan.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
