"""Engines: what turns an image into a cut-out."""
