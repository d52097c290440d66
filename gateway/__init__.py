"""inferloop inference gateway (imports `registry`, never `trainer`)."""
