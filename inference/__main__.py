"""`python -m inference ...`: the entry point of the command layer's inference commands (cli/main.py)."""
import sys

from cli.main import inference_main

sys.exit(inference_main())
