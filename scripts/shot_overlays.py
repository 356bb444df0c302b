"""Screenshot of session 21's Overlays panel changes into docs/screenshots/overlays_small_values_flagged.png:
a ticked flagged Grad-CAM map (no longer "hidden"), a small-valued saliency map whose threshold
was stepped, and the saliency legend ("99.5th pct", the bar at the layer's opacity).

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/shot_overlays.py
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _screens import fresh_window, small_png, wait  # noqa: E402

from PySide6.QtCore import Qt  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "screenshots" / "overlays_small_values_flagged.png"
app, w, home = fresh_window("ia-shot-layers-")
w.open_path(str(Path(__file__).resolve().parents[1] / "imaging_assist" / "data" / "demo" / "chest_xray" / "cxr_03_pa.dcm"))
assert wait(app, lambda: w.load_state == "done" and w.doc.volume is not None, 60)
w.set_layout("single")
from imaging_assist.layers import HeatmapLayer  # noqa: E402
from imaging_assist_ui.ai.model_support import heat_display  # noqa: E402
from imaging_assist_ui.radiology.layers_panel import LAYER_ROLE  # noqa: E402

shape = w.doc.volume.array.shape[:3]
k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
cam = np.exp(-((i - 0.35) ** 2 + (j + 0.1) ** 2) / 0.08).astype(np.float32)
g = w.add_layer(HeatmapLayer("Grad-CAM: pneumonia", cam, vmin=0, vmax=1, threshold=0.2, method="Grad-CAM"))
g.set_flags(["negative faithfulness (-0.35)"])
rng = np.random.default_rng(0)
sal = (np.abs(rng.normal(0, 1, shape)) * np.exp(-((i + 0.3) ** 2 + j ** 2) / 0.15) * 1e-3).astype(np.float32)
vmin, vmax, thr, _ = heat_display(sal, "saliency")
s = w.add_layer(HeatmapLayer("Saliency: pneumonia", sal, vmin=vmin, vmax=vmax, threshold=thr, method="Saliency"))
panel = w.layers_panel
w.layers_dock.show()
items = {panel.tree.topLevelItem(n).data(0, LAYER_ROLE).name: panel.tree.topLevelItem(n)
         for n in range(panel.tree.topLevelItemCount())}
items["Grad-CAM: pneumonia"].setCheckState(0, Qt.Checked)  # the reader ticks the flagged map
panel.tree.setCurrentItem(items["Saliency: pneumonia"])
for _ in range(3):
    panel.threshold.stepBy(1)
view = w.view_area.single
view.fit()
view.set_zoom(view.zoom * 0.8)
wait(app, lambda: False, 1.0)
print("tree:", [panel.tree.topLevelItem(n).text(0) for n in range(panel.tree.topLevelItemCount())])
print("threshold box:", panel.threshold.text(), "layer threshold:", s.threshold, "legend:", view.legend_rect)
print(small_png(w.grab().toImage(), OUT))
w.close()
