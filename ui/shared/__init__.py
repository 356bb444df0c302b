"""Shared by every workspace: the theme and the slice renderer."""
