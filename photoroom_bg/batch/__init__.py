"""Batch processing: BatchRemover and its handles."""
