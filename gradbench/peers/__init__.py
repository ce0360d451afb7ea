"""Peer implementations that gradbench is timed and checked against (optional extras).

Each peer module imports its library lazily, so ``import gradbench`` never needs them; install
them with ``pip install gradbench[peers]``.
"""
