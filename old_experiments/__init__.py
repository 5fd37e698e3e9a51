"""The early experiments that led to geventcomet's design, made runnable.

Each module is a script: ``python -m old_experiments.NAME --help``. See README.md
in this folder for what each one shows and the figures measured with it.
Importing this package has no side effects (no monkey-patching).
"""
