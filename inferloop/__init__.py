"""inferloop: the closed ML delivery loop. The `inferloop` command lives in `inferloop.cli`."""
