"""Converters from the dataset layouts users have on disk to manifest items.

One module per layout; each exposes ``convert_<layout>(root, **options) -> list[ManifestItem]``
and reads the dataset where it is (nothing is copied).
"""
