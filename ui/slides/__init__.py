"""Whole-slide workspace: slide view, slide page, tile loading, slide layers, slide detection."""
