"""Benchmarks on the sandbox (``python -m tests.benchmarks.run``); not collected by pytest."""
