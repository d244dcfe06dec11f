"""``python -m benchmarks.reproduce``: run the reproduction protocols and print the claims table."""

from benchmarks.reproduce.cli import main

raise SystemExit(main())
