"""`python -m compress` is the `edgetier` command."""

from compress.cli import main

main()
