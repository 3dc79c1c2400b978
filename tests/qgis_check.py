"""Run by tests/test_styles.py under the system Python with PyQGIS: load layers, print what QGIS made of them.

Usage: python3 qgis_check.py RASTER VECTOR [PNG]; prints one JSON line. With PNG, also renders both layers to it.
"""

import json
import os
import sys

from qgis.core import (
    QgsApplication,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor

app = QgsApplication([], False)
app.initQgis()
raster = QgsRasterLayer(sys.argv[1], "scores")
vector = QgsVectorLayer(sys.argv[2], "detections", "ogr")
ren = raster.renderer()
shader = ren.shader().rasterShaderFunction() if hasattr(ren, "shader") else None
items = shader.colorRampItemList() if shader is not None else []
vren = vector.renderer()
out = {
    "raster_valid": raster.isValid(),
    "raster_renderer": ren.type(),
    "raster_band": ren.band() if hasattr(ren, "band") else None,
    "raster_breaks": [i.value for i in items],
    "raster_alpha": [i.color.alpha() for i in items],
    "vector_valid": vector.isValid(),
    "vector_count": vector.featureCount(),
    "vector_renderer": vren.type(),
    "vector_attr": vren.classAttribute() if hasattr(vren, "classAttribute") else None,
    "vector_ranges": [[r.lowerValue(), r.upperValue()] for r in vren.ranges()] if hasattr(vren, "ranges") else [],
    "labels": vector.labelsEnabled(),
    "label_field": vector.labeling().settings().fieldName if vector.labeling() is not None else None,
}
if len(sys.argv) > 3:
    settings = QgsMapSettings()
    settings.setLayers([vector, raster])
    settings.setDestinationCrs(raster.crs())
    settings.setExtent(raster.extent())
    settings.setOutputSize(QSize(720, 720))
    settings.setBackgroundColor(QColor(40, 40, 40))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    job.renderedImage().save(sys.argv[3], "PNG")
print(json.dumps(out), flush=True)
# QGIS 3.22 can crash while tearing down its application object after an offscreen run; nothing is left to do
os._exit(0)
