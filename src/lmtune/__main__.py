"""`python -m lmtune` runs the command line."""

from lmtune.cli import main

main()
