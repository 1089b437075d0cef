"""`python -m sync.cli` runs the command line, as the `regionsync` script does."""

from sync.cli import main

main()
