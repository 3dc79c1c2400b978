"""STAC imagery as products: an item (a JSON file or URL) or a folder of its downloaded assets becomes the same
``products.Product`` a Sentinel-2 or Landsat folder does, and a STAC API search becomes a list of item files.

An item's spectral assets are its bands: one band each, named by the band's ``name`` (else the asset key), with the
centre wavelength in nm from STAC 1.0 ``eo:bands`` or STAC 1.1 ``bands`` (``eo:center_wavelength``, micrometres in
both); ``--bands`` takes asset keys, band names or (unambiguous) common names. Its quality asset (``scl``: Sentinel-2
scene classes; ``qa_pixel``: Landsat bits) is the default mask, with the rules of ``products``. Asset hrefs stay as
they are: a URL is read remotely by GDAL (``/vsicurl/``, by ranges, nothing downloaded), a relative href is resolved
against the item's own location (a local item JSON beside its assets).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, InputError, RsvaeWarning
from pipeline.products import (
    LANDSAT_QA_BITS,
    OLI_WAVELENGTHS,
    S2_SCL_INVALID,
    S2_WAVELENGTHS,
    TM_WAVELENGTHS,
    Band,
    MaskRule,
    Product,
    normal_name,
)

#: (connect, read) time-outs in s of STAC requests (items, searches): with the retries a silent server fails
#: the request within about two minutes.
TIMEOUT = (10.0, 30.0)
#: Retries of a STAC request on connection errors and 429/5xx answers, with exponential back-off.
RETRIES = 3
#: Back-off factor of those retries: waits of 0, 2 x, 4 x ... this many seconds.
BACKOFF = 0.5
#: Common names of the reflective bands stacked by default (without coastal aerosol, water vapour, cirrus,
#: panchromatic and thermal bands): Sentinel-2 B02-B08, B8A, B11, B12; Landsat OLI B2-B7; TM/ETM+ B1-B5, B7.
DEFAULT_COMMON = ("blue", "green", "red", "rededge", "nir", "nir08", "swir16", "swir22")
#: Quality assets by (lower-case) key, with the pixels they mark unusable (as a product folder's SCL or QA_PIXEL).
QUALITY = {"scl": ("SCL", S2_SCL_INVALID, ()), "qa_pixel": ("QA_PIXEL", (), LANDSAT_QA_BITS)}
#: Asset roles that are never bands.
SKIP_ROLES = {"thumbnail", "overview", "metadata", "visual"}
#: Sentinel-2 asset keys (Earth Search's common-name keys; Planetary Computer's B02 ... are the band names).
S2_KEYS = {"coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06",
           "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09", "cirrus": "B10", "swir16": "B11",
           "swir22": "B12"}
#: Landsat Collection 2 asset keys (USGS, Earth Search, Planetary Computer) -> OLI and TM/ETM+ band names.
OLI_KEYS = {"coastal": "B1", "blue": "B2", "green": "B3", "red": "B4", "nir08": "B5", "swir16": "B6",
            "swir22": "B7", "pan": "B8", "cirrus": "B9", "lwir11": "B10", "lwir12": "B11"}
TM_KEYS = {"blue": "B1", "green": "B2", "red": "B3", "nir08": "B4", "swir16": "B5", "lwir": "B6", "swir22": "B7",
           "pan": "B8"}
_COMMON = {"B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge", "B06": "rededge",
           "B07": "rededge", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B10": "cirrus", "B11": "swir16",
           "B12": "swir22"}
_RASTER_FILE = re.compile(r"^(.+)\.(tif|tiff|jp2)$", re.I)
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)
#: Extensions of data files (a COG under a folder named items/ is no item; item ids may hold dots: HLS.S30.T32...)
_DATA_FILE = re.compile(r"\.(tiff?|jp2|vrt|nc|h5|he5|hdf|img|bsq|bil|bip|dat|zip)$", re.I)


def is_item_name(name: str | os.PathLike) -> bool:
    """Whether ``name`` names a STAC item: a ``.json``/``.geojson`` file or URL, or an API URL ``.../items/ID``."""
    text = os.fspath(name)
    path = re.split(r"[?#]", text, maxsplit=1)[0] if _URL.match(text) else text
    if path.lower().endswith((".json", ".geojson")):
        return True
    return bool(_URL.match(text) and re.search(r"/items/[^/]+$", path)) and not _DATA_FILE.search(path)


def _io() -> Any:
    """pystac-client's HTTP reader with time-outs and retries (pystac's own reader waits forever)."""
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    retry = Retry(total=RETRIES, backoff_factor=BACKOFF, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=None)
    return StacApiIO(timeout=TIMEOUT, max_retries=retry)


def _reason(exc: BaseException) -> str:
    """An exception's message in one line (requests' and urllib3's are long and nested)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "Max retries exceeded" in text and (m := re.search(r"(\[Errno -?\d+\] [^\"')]+|Read timed out)", text)):
        return f"{m.group(1)}; tried {RETRIES + 1} times"
    return text[:300]


def read_item(source: str | os.PathLike) -> Any:
    """The ``pystac.Item`` in a JSON file or at a URL (its relative asset hrefs resolve against ``source``);
    InputError naming ``source`` when it cannot be read or is no item."""
    import pystac

    source = os.fspath(source)
    remote = bool(_URL.match(source))
    if not remote:
        if not os.path.isfile(source):
            raise InputError(f"{source}: STAC item file not found")
        source = os.path.abspath(source)
    try:
        text = _io().read_text(source)
    except Exception as exc:  # requests/urllib3/pystac-client raise many types; every one is "cannot read"
        raise InputError(f"{source}: cannot read the STAC item ({_reason(exc)})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{source}: not JSON ({_reason(exc)})") from None
    if not isinstance(data, dict) or data.get("type") != "Feature" or not isinstance(data.get("assets"), dict):
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{source}: not a STAC item (a GeoJSON Feature with assets; this is {kind!r})")
    try:
        return pystac.Item.from_dict(data, href=source, migrate=False, preserve_dict=False)
    except Exception as exc:  # pystac's STACError, KeyError, ValueError on malformed members
        raise InputError(f"{source}: not a valid STAC item ({_reason(exc)})") from None


def item_id(source: str | os.PathLike) -> str:
    """The id of the item in a local JSON file (a workflow tile's name): plain JSON, fast for many items."""
    try:
        with open(source, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"{source}: not a STAC item ({_reason(exc)})") from None
    if not isinstance(data, dict) or data.get("type") != "Feature" or not data.get("id"):
        raise InputError(f"{source}: not a STAC item (a GeoJSON Feature with an id)")
    return str(data["id"])


def _band_fields(asset: Any) -> list[dict[str, Any]]:
    """The asset's bands, each as {name, common_name, wavelength (nm) or None}: STAC 1.1 ``bands`` (``eo:``
    prefixed fields) or STAC 1.0 ``eo:bands``."""
    extra = asset.extra_fields
    out = []
    for entry in extra.get("bands") or extra.get("eo:bands") or []:
        if not isinstance(entry, dict):
            continue
        wl = entry.get("eo:center_wavelength", entry.get("center_wavelength"))
        out.append({"name": entry.get("name"),
                    "common_name": entry.get("eo:common_name", entry.get("common_name")),
                    "wavelength": round(float(wl) * 1000, 1) if isinstance(wl, (int, float)) else None})
    return out


def _is_raster(asset: Any) -> bool:
    """Whether an asset may be a band: raster media type (or none given) and no thumbnail/metadata role."""
    roles = set(asset.roles or ())
    if roles & SKIP_ROLES and "data" not in roles:
        return False
    kind = (asset.media_type or "").lower()
    return not kind or "tiff" in kind or "jp2" in kind


def _href(asset: Any, local: dict[str, Path] | None, key: str) -> tuple[str, bool]:
    """Where GDAL reads an asset: a downloaded file named by its key, else its (absolute) href; and whether it
    is there (a URL is taken to be; a local href must name a file)."""
    if local is not None:
        found = local.get(key.lower())
        return (str(found), True) if found else (f"{key}.tif", False)
    href = asset.get_absolute_href() or asset.href
    if href.startswith("file://"):
        href = href[len("file://"):]
    return href, bool(_URL.match(href)) or os.path.isfile(href)


def item_product(source: str | os.PathLike, item: Any = None, local: dict[str, Path] | None = None) -> Product:
    """The product an item describes: its spectral assets as bands, its quality asset as the mask rule.

    ``local`` (asset key -> file) reads downloaded assets instead of the hrefs (a folder of assets named by key).
    """
    source = os.fspath(source)
    item = item if item is not None else read_item(source)
    candidates: dict[str, tuple[int, str, Band, dict[str, Any]]] = {}
    quality = None
    skipped = []
    notes: list[str] = []
    for key, asset in item.assets.items():
        if not _is_raster(asset):
            continue
        fields = _band_fields(asset)
        if key.lower() in QUALITY and len(fields) <= 1:
            href, there = _href(asset, local, key)
            label, values, bits = QUALITY[key.lower()]
            if there:
                quality = MaskRule(href, label, values=values, bits=bits)
            else:
                notes.append(f"the quality asset {key!r} names no file ({href}); not masked by {label}")
            continue
        if len(fields) != 1 or fields[0]["wavelength"] is None:
            continue  # multi-band (visual) or not spectral (AOT, WVP, angles)
        info = fields[0]
        name = str(info["name"] or key)
        href, there = _href(asset, local, key)
        if not there:
            skipped.append((key, href, name))
            continue
        rank = 0 if "tif" in (asset.media_type or "").lower() or not asset.media_type else 1  # COG over JP2
        entry = (rank, key, Band(name, href, info["wavelength"]), {**info, "key": key})
        if name not in candidates or entry[:2] < candidates[name][:2]:
            candidates[name] = entry
    if not candidates:
        why = (f"; {len(skipped)} band assets name no file, e.g. {skipped[0][0]}: {skipped[0][1]}"
               if skipped else "")
        raise InputError(f"{source}: STAC item {item.id} has no usable band assets (single-band rasters with "
                         f"a centre wavelength in eo:bands or bands){why}")
    missing: dict[str, str] = {}
    for key, _, name in skipped:
        if name not in candidates:
            missing.setdefault(name, key)  # a band's first asset (blue, not also blue-jp2)
    if missing:
        listed = ", ".join(f"{name} ({key})" for name, key in missing.items())
        notes.append(f"band assets {listed} name no file; left out")
    for note in notes:  # after the error above: an item with no bands is one line, not warnings and a line
        warnings.warn(f"{source}: {note}", RsvaeWarning, stacklevel=2)
    bands = {name: entry[2] for name, entry in sorted(candidates.items(), key=lambda kv: kv[1][2].wavelength)}
    aliases: dict[str, str | None] = {}
    for name, (_, key, _, info) in candidates.items():
        for alias in (key, info["common_name"]):
            if alias and normal_name(alias) != normal_name(name):
                n = normal_name(alias)
                aliases[n] = name if aliases.get(n, name) == name else None  # ambiguous: dropped below
    commons = {name: entry[3]["common_name"] for name, entry in candidates.items()}
    if any(commons.values()):
        default = tuple(n for n in bands if commons[n] in DEFAULT_COMMON)
    else:
        default = tuple(bands)
    platform = item.properties.get("platform") or item.properties.get("constellation") or item.collection_id
    sensor = f"{platform} item {item.id}" if platform else f"STAC item {item.id}"
    return Product(source, sensor, bands, default, quality,
                   aliases={a: n for a, n in aliases.items() if n is not None})


# --------------------------------------------------------------------------------------------- asset folders

def _key_files(folder: Path) -> dict[str, Path]:
    """The folder's raster files by lower-case stem (``B02.tif`` -> ``b02``)."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and (m := _RASTER_FILE.match(p.name)):
            out.setdefault(m.group(1).lower(), p)
    return out


def _item_in(folder: Path) -> tuple[Path, Any] | None:
    """The STAC item JSON among the folder's ``*.json`` files, if one is."""
    for p in sorted(folder.glob("*.json")):
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("type") == "Feature" and isinstance(data.get("assets"), dict):
            return p, read_item(p)
    return None


def folder_product(folder: str | Path) -> Product | None:
    """A folder of downloaded STAC assets named by their keys (``B02.tif``, ``blue.tif``, ``scl.tif``, ...) as a
    product, or None when its file names are no asset keys rsvae knows.

    With the item's JSON in the folder, bands, names and wavelengths come from it (read from the local files);
    without, from the key tables of Sentinel-2 (``B02`` or ``blue`` ... with ``scl``/``rededge*``) and Landsat
    Collection 2 (``blue`` ... with ``qa_pixel``/``lwir*``: Landsat 4-7 when the thermal asset is ``lwir``,
    else 8/9).
    """
    folder = Path(folder)
    files = _key_files(folder)
    if not files:
        return None
    found = _item_in(folder)
    if found is not None:
        path, item = found
        if any(k.lower() in files for k in item.assets):
            return item_product(path, item, local=files)
    s2_names = {b.lower() for b in S2_WAVELENGTHS}
    if files.keys() & (s2_names | {"scl", "rededge1", "rededge2", "rededge3", "nir", "nir09"}):
        table = {**{b.lower(): b for b in S2_WAVELENGTHS}, **S2_KEYS}
        wavelengths, sensor, quality_key = S2_WAVELENGTHS, "Sentinel-2", "scl"
        common = _COMMON
    elif files.keys() & {"qa_pixel", "lwir11", "lwir", "lwir12"}:
        oli = "lwir" not in files  # TM/ETM+'s one thermal key; OLI's are lwir11/12 (8/9: the usual case)
        table, wavelengths = (OLI_KEYS, OLI_WAVELENGTHS) if oli else (TM_KEYS, TM_WAVELENGTHS)
        sensor, quality_key = ("Landsat 8/9" if oli else "Landsat 4-7"), "qa_pixel"
        common = {b: k for k, b in table.items()}
    else:
        return None
    bands: dict[str, Band] = {}
    aliases: dict[str, str] = {}
    for stem, path in files.items():
        name = table.get(stem)
        if name is None or name in bands:
            continue
        bands[name] = Band(name, path, wavelengths[name])
        aliases[normal_name(stem)] = name
    if not bands:
        return None
    commons = [common[n] for n in bands if common.get(n)]
    for name in bands:  # common names that name one band only (not Sentinel-2's three rededge bands)
        if common.get(name) and commons.count(common[name]) == 1:
            aliases.setdefault(normal_name(common[name]), name)
    aliases = {a: n for a, n in aliases.items() if a != normal_name(n)}
    ordered = dict(sorted(bands.items(), key=lambda kv: kv[1].wavelength))
    # the sensor's whole default (as products' tables): Product.select takes the ones there are
    default = tuple(n for n in sorted(wavelengths, key=wavelengths.get) if common.get(n) in DEFAULT_COMMON)
    label, values, bits = QUALITY[quality_key]
    quality = MaskRule(files[quality_key], label, values=values, bits=bits) if quality_key in files else None
    return Product(folder, f"{sensor} (assets by key)", ordered, default, quality, aliases=aliases)


# --------------------------------------------------------------------------------------------- searches

def search(spec: dict[str, Any]) -> list[Any]:
    """The items a STAC API search returns (``url``, ``collections``, ``bbox``, ``datetime``, ``query``,
    ``ids``, at most ``max_items``), in the API's order; ConfigError naming the URL when the API fails."""
    from pystac_client import Client

    url = spec["url"]
    params = {k: spec[k] for k in ("collections", "bbox", "datetime", "query", "ids") if spec.get(k) is not None}
    try:
        client = Client.open(url, stac_io=_io())
        return list(client.search(max_items=spec["max_items"], **params).items())
    except Exception as exc:  # pystac-client's APIError, requests' errors, a landing page that is no API
        raise ConfigError(f"stac search at {url}: {_reason(exc)}") from None


def spec_key(spec: dict[str, Any]) -> str:
    """A short, stable digest of a search (its parameters in canonical JSON): names its recorded results."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def resolve_search(spec: dict[str, Any], folder: str | Path) -> dict[str, str]:
    """Item id -> local item file for a search, made once: the items are written to ``folder/items/ID.json``
    and the list to ``folder/search-KEY.json`` (a GeoJSON FeatureCollection of the items with the search's
    parameters), which later calls (every job of a run, a repeated run) read instead of asking the API again."""
    import pystac

    from pipeline.files import atomic_path

    folder = Path(folder)
    record = folder / f"search-{spec_key(spec)}.json"
    if record.is_file():
        try:
            data = json.loads(record.read_text())
            ids = [f["id"] for f in data["features"]]
            if data.get("rsvae:search") == spec and all((folder / "items" / f"{i}.json").is_file() for i in ids):
                return {i: str(folder / "items" / f"{i}.json") for i in ids}
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unreadable record is made again
    items = search(spec)
    if not items:
        raise ConfigError(f"stac search at {spec['url']}: no items match {json.dumps(spec, sort_keys=True)}")
    out: dict[str, str] = {}
    (folder / "items").mkdir(parents=True, exist_ok=True)
    for item in items:
        item.make_asset_hrefs_absolute()
        path = folder / "items" / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', item.id)}.json"
        text = json.dumps(item.to_dict(include_self_link=True, transform_hrefs=False), indent=1)
        if not (path.is_file() and path.read_text() == text):
            with atomic_path(path) as tmp:
                tmp.write_text(text)
        out[str(item.id)] = str(path)
    collection = pystac.ItemCollection(items).to_dict(transform_hrefs=False)
    collection["rsvae:search"] = spec
    with atomic_path(record) as tmp:
        tmp.write_text(json.dumps(collection, indent=1))
    return out


def resolve(entries: Sequence[Any], key: str, folder: str | Path) -> tuple[list[str], dict[str, str]]:
    """A ``normal``/``targets`` list split into its plain entries (globs, files, URLs) and the items of its
    searches (``{stac: {...}}`` entries; id -> item file under ``folder``)."""
    plain: list[str] = []
    items: dict[str, str] = {}
    for entry in entries:
        if isinstance(entry, str):
            plain.append(entry)
            continue
        for name, path in resolve_search(entry["stac"], folder).items():
            if name in items and items[name] != path:
                raise ConfigError(f"{key}: two searched items named {name!r}")
            items[name] = path
    return plain, items

