"""The `aggjobs` command line."""
