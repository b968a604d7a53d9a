"""Benchmarks for sqsd: figures printed beside targets, never a pass or fail on time.

Run ``make bench`` or ``python bench/run.py --help``; bench/README.md explains each scenario.
"""
