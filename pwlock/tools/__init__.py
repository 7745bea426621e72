"""Developer tools for pwlock's own code (python -m pwlock.tools.<name>)."""
