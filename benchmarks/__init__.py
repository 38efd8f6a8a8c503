"""Benchmarks: run on demand, results written as JSON (see README)."""
