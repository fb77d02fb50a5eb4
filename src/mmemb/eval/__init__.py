"""Evaluation: the benchmark registry, task loaders, metrics, runner and score reports."""
