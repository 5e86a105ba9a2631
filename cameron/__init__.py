"""Cameron: a workflow server that runs trees of HTTP steps, recorded in Redis."""

__version__ = '0.1.0'
