"""Connections, the embedded server, migrations."""
