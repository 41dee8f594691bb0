"""`python -m profiler ...`: the entry point of the command layer's profiler commands (cli/main.py)."""
import sys

from cli.main import profiler_main

sys.exit(profiler_main())
