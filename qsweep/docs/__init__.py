"""The reference pages generated from the code: docs/metrics.md (`python -m qsweep.docs`)."""
