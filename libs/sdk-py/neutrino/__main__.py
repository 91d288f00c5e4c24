"""`python -m neutrino ...` is the `neutrino` command."""

from .cli import main

main()
