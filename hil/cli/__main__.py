"""`python -m hil.cli` runs the `rram` command line."""

from hil.cli import main

main()
