"""The command layer: every command of `python -m profiler` and `python -m inference` (main.py dispatches).

The top floor of the house: it may import every package below (models, profiler, inference, reports), and
none of them imports it. A command parses its arguments, calls the libraries (which return data), prints,
and writes files and reports; see ARCHITECTURE.md.
"""
