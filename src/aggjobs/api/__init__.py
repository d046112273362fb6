"""The HTTP side of aggjobs (`aggjobs serve`): API tokens with roles, the JSON API,
Prometheus metrics and a minimal dashboard. See docs/api.md."""
