"""Benchmarks that print tables and write JSON (ratios against a baseline in the same run)."""
