"""`python -m pwlock cost FILE ...` (pwlock.cli)."""

import sys

from pwlock.cli import tool

sys.exit(tool(sys.argv[1:]))
