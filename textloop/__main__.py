"""`python -m textloop` runs the CLI."""

from textloop.cli import main

main()
