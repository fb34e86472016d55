"""Offline tools for testing code that uses photoroom_bg."""
