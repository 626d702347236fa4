"""Benchmarks: each prints JSON, its last line the figures the issue asks for."""
