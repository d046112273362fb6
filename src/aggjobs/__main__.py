"""`python -m aggjobs` is the `aggjobs` command."""

from .cli.main import main

main()
