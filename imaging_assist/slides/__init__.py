"""Whole-slide images: one reader over OpenSlide / tifffile / wsidicom / Pillow, tissue
detection, tiled inference plumbing and heat-map output.  No Qt.

Coordinates are level-0 pixels ``(x, y)`` as in OpenSlide; sizes ``(width, height)``.
"""

from .reader import (MISSING_MPP_MESSAGE, BackendDeclined, MissingMPPWarning, Slide, SlideBackend, SlideError,
                     SlideReadError, UnsupportedSlideError, open_slide, register_backend, registered_backends,
                     to_rgb, unregister_backend)
from .tissue import TissueMask, detect_tissue
from .tiling import TilePlan, TileResult, TopTile, plan_tiles, run_tiles
from .heatmap_io import read_heatmaps, write_heatmaps, write_overview_png
from .cli import SlideSummary, format_info, info_dict, is_slide_path, scan_slides

__all__ = [
    "MISSING_MPP_MESSAGE", "MissingMPPWarning", "Slide", "SlideError", "SlideReadError",
    "UnsupportedSlideError", "open_slide", "to_rgb", "BackendDeclined", "SlideBackend", "register_backend",
    "registered_backends", "unregister_backend",
    "TissueMask", "detect_tissue",
    "TilePlan", "TileResult", "TopTile", "plan_tiles", "run_tiles",
    "read_heatmaps", "write_heatmaps", "write_overview_png",
    "SlideSummary", "format_info", "info_dict", "is_slide_path", "scan_slides",
]
