"""QGIS styles: a ``.qml`` beside every score raster and a default style inside every detections GeoPackage.

Both use the same rarity classes (breaks 2, 3, 4, 6): QGIS applies a ``NAME.qml`` beside ``NAME.tif`` when the
raster is added, and a GeoPackage's ``layer_styles`` row with ``useAsDefault`` when its layer is added. The QML is
the minimal text QGIS reads (it fills every other setting with its defaults); tests load both in real QGIS.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from xml.sax.saxutils import quoteattr

from pipeline.errors import OutputError
from pipeline.files import atomic_path

#: Rarity classes: (upper bound, colour, label). Below the first break is transparent.
BREAKS = (2.0, 3.0, 4.0, 6.0)
COLOURS = ("#fed976", "#fd8d3c", "#e31a1c", "#800026")
STYLE_NAME = "rsvae rarity"


def _classes() -> list[tuple[float, float, str, str]]:
    """(lower, upper, colour, label) per coloured class; the last is open-ended."""
    bounds = [*BREAKS, float("inf")]
    out = []
    for i, colour in enumerate(COLOURS):
        lo, hi = bounds[i], bounds[i + 1]
        label = f"rarity ≥ {lo:g}" if hi == float("inf") else f"rarity {lo:g}–{hi:g}"
        out.append((lo, hi, colour, label))
    return out


def raster_qml(band: int) -> str:
    """QML for a score raster: band ``band`` (rarity) in discrete classes at 2, 3, 4, 6, transparent up to 2."""
    items = [f'<item value="{BREAKS[0]:g}" color="#000000" alpha="0" label="rarity &lt; 2 (common)"/>']
    for _lo, hi, colour, label in _classes():
        value = "inf" if hi == float("inf") else f"{hi:g}"
        items.append(f'<item value="{value}" color="{colour}" alpha="255" label={quoteattr(label)}/>')
    body = "\n          ".join(items)
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22" styleCategories="AllStyleCategories">
  <pipe>
    <rasterrenderer type="singlebandpseudocolor" band="{band}" opacity="1" alphaBand="-1"
        classificationMin="{BREAKS[0]:g}" classificationMax="{BREAKS[-1]:g}" nodataColor="">
      <minMaxOrigin><limits>None</limits><extent>WholeRaster</extent></minMaxOrigin>
      <rastershader>
        <colorrampshader colorRampType="DISCRETE" classificationMode="1" clip="0"
            minimumValue="{BREAKS[0]:g}" maximumValue="{BREAKS[-1]:g}">
          {body}
        </colorrampshader>
      </rastershader>
    </rasterrenderer>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""


def _fill_symbol(name: int, colour: str) -> str:
    rgb = ",".join(str(int(colour[i:i + 2], 16)) for i in (1, 3, 5))
    return f"""      <symbol type="fill" name="{name}" alpha="1" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <Option type="Map">
            <Option type="QString" name="style" value="no"/>
            <Option type="QString" name="color" value="0,0,0,0"/>
            <Option type="QString" name="outline_color" value="{rgb},255"/>
            <Option type="QString" name="outline_style" value="solid"/>
            <Option type="QString" name="outline_width" value="0.6"/>
            <Option type="QString" name="outline_width_unit" value="MM"/>
          </Option>
        </layer>
      </symbol>"""


def vector_qml() -> str:
    """QML for a detections layer: outlines coloured by ``peak_rarity`` (same classes), labelled by ``rank``."""
    classes = _classes()
    ranges, symbols = [], []
    for i, (lo, hi, colour, label) in enumerate(classes):
        lower = 0.0 if i == 0 else lo  # a lower --min-rarity still gets the first class
        upper = 1000.0 if hi == float("inf") else hi
        ranges.append(f'      <range symbol="{i}" lower="{lower:g}" upper="{upper:g}" render="true" '
                      f'label={quoteattr(label if i else f"rarity < {hi:g}")}/>')
        symbols.append(_fill_symbol(i, colour))
    ranges_text, symbols_text = "\n".join(ranges), "\n".join(symbols)
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22" styleCategories="AllStyleCategories">
  <renderer-v2 type="graduatedSymbol" attr="peak_rarity" graduatedMethod="GraduatedColor" symbollevels="0"
      enableorderby="0" forceraster="0">
    <ranges>
{ranges_text}
    </ranges>
    <symbols>
{symbols_text}
    </symbols>
  </renderer-v2>
  <labeling type="simple">
    <settings calloutType="simple">
      <text-style fieldName="rank" isExpression="0" fontSize="9" fontSizeUnit="Point" textColor="20,20,20,255"
          fontWeight="75" namedStyle="Bold">
        <text-buffer bufferDraw="1" bufferSize="0.8" bufferSizeUnits="MM" bufferColor="255,255,255,255"
            bufferOpacity="0.85"/>
      </text-style>
      <placement placement="0" dist="1" distUnits="MM" centroidWhole="1"/>
      <rendering drawLabels="1" obstacle="0" displayAll="1" upsidedownLabels="0" scaleVisibility="0"/>
    </settings>
  </labeling>
  <blendMode>0</blendMode>
</qgis>
"""


def write_raster_qml(raster: str | Path, band: int) -> Path:
    """Write ``NAME.qml`` beside ``NAME.tif`` (QGIS applies it when the raster is added)."""
    path = Path(raster).with_suffix(".qml")
    with atomic_path(path) as tmp:
        tmp.write_text(raster_qml(band), encoding="utf-8")
    return path


_CREATE = """CREATE TABLE IF NOT EXISTS layer_styles (
    id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256), f_table_schema TEXT(256),
    f_table_name TEXT(256), f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT, styleSLD TEXT,
    useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
    update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"""


def add_gpkg_style(gpkg: str | Path, layer: str) -> None:
    """Store the detections style as ``layer``'s default in the GeoPackage's ``layer_styles`` table (QGIS reads it)."""
    try:
        with sqlite3.connect(gpkg) as db:
            row = db.execute("SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)).fetchone()
            if row is None:
                raise OutputError(f"{gpkg}: has no layer {layer!r} to style")
            db.execute(_CREATE)
            db.execute("INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier) "
                       "VALUES ('layer_styles', 'attributes', 'layer_styles')")
            db.execute("UPDATE layer_styles SET useAsDefault = 0 WHERE f_table_name = ?", (layer,))
            db.execute("INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, "
                       "styleName, styleQML, styleSLD, useAsDefault, description, owner, ui) "
                       "VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '', NULL)",
                       (layer, row[0], STYLE_NAME, vector_qml(),
                        "rsvae detections: outlines by peak rarity (2, 3, 4, 6), labelled by rank"))
        db.close()
    except sqlite3.Error as exc:
        raise OutputError(f"{gpkg}: cannot store the layer style ({exc})") from None
