"""Benchmarks: trio_producer against the raw confluent loop, AIOProducer and aiokafka.

Run ``python -m benchmarks`` (``--help`` for options). Each measurement runs in its own
process (``python -m benchmarks.clients NAME ...``) against one embedded broker, in
alternation, repeated; the table reports medians and ratios from the same run.
"""
