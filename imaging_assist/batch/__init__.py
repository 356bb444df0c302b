"""Batch runs over whole archives (no Qt), embedded Ray by default or on a cluster."""
