"""Finding image/label pairs in the two training-data layouts.

1. Research layout: ``DATA/{train,val,test}/mask/*`` are the RGB images (sic) and
   ``DATA/{train,val,test}/label/*`` the labels with the same names; when the model is binary,
   tumor masks stored as 0/255 (> 127 is tumor) or as 0/1, recognised per file; class indices
   otherwise.
2. Exported correction set: ``SET/manifest.json`` (format ``samlung-training-set``, version 1)
   listing ``images/<id>.png`` and ``labels/<id>.png`` (0 background, 1..N classes, 255 ignored).

Discovery only looks at names and the manifest; :mod:`napari_samlung.data.pairs` decodes the
files and checks sizes and label values.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from napari_samlung.data.files import DataError, is_image_file
from napari_samlung.labels import IGNORE

SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "samlung-training-set"
MANIFEST_VERSION = 1

#: Label encodings: research labels (0/255 or 0/1 masks when binary) or class indices with 255 ignored.
RESEARCH = "research"
INDEXED = "indexed"


@dataclass(frozen=True)
class Pair:
    """One image and its label file (``label`` is None for images to predict only)."""

    name: str
    image: Path
    label: Path | None
    encoding: str = INDEXED
    split: str = "train"


@dataclass(frozen=True)
class ExportSet:
    """The parsed manifest of an exported correction set."""

    root: Path
    num_classes: int
    mpp: float | None
    tile_size: int | None
    pairs: tuple[Pair, ...]


@dataclass
class TrainingData:
    """All pairs of the given data paths, by split, with what the manifests say about them."""

    train: list[Pair]
    val: list[Pair]
    test: list[Pair]
    num_classes: int
    mpp: float | None
    tile_size: int | None
    notes: list[str] = field(default_factory=list)  # facts worth a log line


def _image_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not is_image_file(path):
            continue
        if path.stem in files:
            raise DataError(f"{path}: two images named {path.stem!r} in {folder} ({files[path.stem].name})")
        files[path.stem] = path
    return files


def research_split(folder: Path, split: str, labels_required: bool = True) -> list[Pair]:
    """Pairs of a research split folder holding ``mask/`` (images) and ``label/`` (labels)."""
    images_dir, labels_dir = folder / "mask", folder / "label"
    if not images_dir.is_dir():
        raise DataError(f"{folder}: no mask/ folder (the research layout keeps images in mask/)")
    images = _image_files(images_dir)
    if not images:
        raise DataError(f"{images_dir}: empty split (no .png/.jpg/.tif images)")
    if not labels_dir.is_dir():
        if labels_required:
            raise DataError(f"{folder}: no label/ folder beside mask/")
        return [Pair(name, path, None, RESEARCH, split) for name, path in images.items()]
    labels = _image_files(labels_dir)
    for name, path in images.items():
        if name not in labels:
            raise DataError(f"{path}: no label with the same name in {labels_dir}")
    for name, path in labels.items():
        if name not in images:
            raise DataError(f"{path}: no image with the same name in {images_dir}")
    return [Pair(name, images[name], labels[name], RESEARCH, split) for name in images]


def _manifest_field(manifest: dict, key: str, kinds: tuple[type, ...], path: Path, optional: bool = False):
    if key not in manifest:
        if optional:
            return None
        raise DataError(f"{path}: missing {key!r}")
    value = manifest[key]
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise DataError(f"{path}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def read_export_set(root: Path) -> ExportSet:
    """Parse and check ``root/manifest.json``; every listed file must exist."""
    root = Path(root)
    path = root / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read manifest ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: expected a JSON object")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path}: format is {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    if manifest.get("version") != MANIFEST_VERSION:
        raise DataError(
            f"{path}: unsupported version {manifest.get('version')!r} "
            f"(this program reads version {MANIFEST_VERSION})"
        )
    num_classes = _manifest_field(manifest, "num_classes", (int,), path)
    if num_classes < 1:
        raise DataError(f"{path}: num_classes must be >= 1, got {num_classes}")
    ignore = _manifest_field(manifest, "ignore_index", (int,), path, optional=True)
    if ignore is not None and ignore != IGNORE:
        raise DataError(f"{path}: ignore_index must be {IGNORE}, got {ignore}")
    mpp = _manifest_field(manifest, "mpp", (int, float), path, optional=True)
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise DataError(f"{path}: mpp must be a positive number or null, got {mpp}")
    tile_size = _manifest_field(manifest, "tile_size", (int,), path, optional=True)
    tiles = _manifest_field(manifest, "tiles", (list,), path)
    if not tiles:
        raise DataError(f"{path}: empty split (the manifest lists no tiles)")
    pairs: list[Pair] = []
    seen: set[str] = set()
    for index, tile in enumerate(tiles):
        where = f"{path}: tiles[{index}]"
        if not isinstance(tile, dict):
            raise DataError(f"{where} is not an object")
        files = []
        for key in ("image", "label"):
            value = tile.get(key)
            if not isinstance(value, str) or not value:
                raise DataError(f"{where} has no {key!r} path")
            file = root / value
            if not file.is_file():
                raise DataError(f"{file}: listed in {path} but missing")
            files.append(file)
        split = tile.get("split") or "train"
        if split not in SPLITS:
            raise DataError(f"{where}: split must be one of {', '.join(SPLITS)}, got {split!r}")
        name = files[0].stem
        if name in seen:
            raise DataError(f"{where}: duplicate tile name {name!r}")
        seen.add(name)
        pairs.append(Pair(name, files[0], files[1], INDEXED, split))
    return ExportSet(root, num_classes, None if mpp is None else float(mpp), tile_size, tuple(pairs))


def _research_root_splits(root: Path) -> list[Pair]:
    pairs: list[Pair] = []
    for split in SPLITS:
        if (root / split).is_dir():
            pairs += research_split(root / split, split)
    return pairs


def is_research_root(path: Path) -> bool:
    """Whether ``path`` looks like a research ``DATA`` folder (a split folder holding ``mask/``)."""
    return any((path / split / "mask").is_dir() for split in SPLITS)


def stable_fraction(name: str) -> float:
    """A number in [0, 1) fixed by ``name`` alone (same on every machine and Python run)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def hold_out(pairs: Sequence[Pair], fraction: float) -> tuple[list[Pair], list[Pair]]:
    """Split ``pairs`` into (train, val) by a stable hash of the name; at least one of each."""
    if not 0 < fraction < 1:
        raise DataError(f"must be between 0 and 1, got {fraction}", param="val_fraction")
    if len(pairs) < 2:
        raise DataError("no validation data and only one training pair: cannot hold one out "
                        "(add a val split)")
    ranked = sorted(pairs, key=lambda pair: (stable_fraction(pair.name), pair.name))
    count = sum(stable_fraction(pair.name) < fraction for pair in pairs)
    count = min(max(count, 1), len(pairs) - 1)
    val = {id(pair) for pair in ranked[:count]}
    train = [pair for pair in pairs if id(pair) not in val]
    held = [pair for pair in pairs if id(pair) in val]
    return train, [Pair(p.name, p.image, p.label, p.encoding, "val") for p in held]


def discover_training_data(
    data_paths: Iterable[Path | str],
    num_classes: int | None = None,
    val_fraction: float = 0.2,
    require_train: bool = True,
) -> TrainingData:
    """Combine the pairs of every data path (research roots and export sets) by split.

    ``num_classes`` None takes it from the manifests (1 if there are none). Without any
    validation pair, a ``val_fraction`` of the training pairs is held out (see :func:`hold_out`).
    ``require_train`` False (evaluation only) accepts sets without training pairs and holds
    nothing out.
    """
    data_paths = list(data_paths)
    pairs: list[Pair] = []
    manifests: list[ExportSet] = []
    for raw in data_paths:
        root = Path(raw)
        if not root.is_dir():
            raise DataError(f"{root}: {{opt:data_path}} is not a folder")
        if (root / MANIFEST_NAME).is_file():
            export = read_export_set(root)
            manifests.append(export)
            pairs += export.pairs
        elif is_research_root(root):
            pairs += _research_root_splits(root)
        else:
            raise DataError(
                f"{root}: neither a research layout (train/, val/, test/ with mask/ and label/) "
                f"nor an exported training set ({MANIFEST_NAME})"
            )
    notes: list[str] = []
    for export in manifests:
        if num_classes is None:
            num_classes = export.num_classes
        elif export.num_classes != num_classes:
            raise DataError(
                f"{export.root / MANIFEST_NAME}: num_classes is {export.num_classes}, but {num_classes} "
                "is expected ({opt:num_classes} or another data path)"
            )
    num_classes = 1 if num_classes is None else num_classes
    if num_classes < 1:
        raise DataError(f"must be >= 1, got {num_classes}", param="num_classes")

    mpps = sorted({export.mpp for export in manifests if export.mpp is not None})
    mpp = mpps[0] if len(mpps) == 1 else None
    if len(mpps) > 1:
        notes.append(f"the manifests disagree on microns per pixel ({mpps}); not recording one")
    sizes = {export.tile_size for export in manifests if export.tile_size is not None}
    tile_size = sizes.pop() if len(sizes) == 1 else None

    by_split = {split: [pair for pair in pairs if pair.split == split] for split in SPLITS}
    if not require_train:
        return TrainingData(**by_split, num_classes=num_classes, mpp=mpp, tile_size=tile_size, notes=notes)
    if not by_split["train"]:
        raise DataError("no training pairs in " + ", ".join(str(Path(p)) for p in data_paths))
    if not by_split["val"]:
        by_split["train"], by_split["val"] = hold_out(by_split["train"], val_fraction)
        notes.append(
            f"no validation data: held out {len(by_split['val'])} of "
            f"{len(by_split['train']) + len(by_split['val'])} training pairs "
            f"({{opt:val_fraction}} {val_fraction}, chosen by a hash of the name)"
        )
    return TrainingData(**by_split, num_classes=num_classes, mpp=mpp, tile_size=tile_size, notes=notes)


def prediction_inputs(folder: Path | str) -> list[Pair]:
    """Pairs to evaluate in ``folder``: a research split folder (``mask/`` + ``label/``), an
    export set (all its tiles), or a plain folder of images (labels None: predict only)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: {{opt:data_path}} is not a folder")
    if (folder / MANIFEST_NAME).is_file():
        return list(read_export_set(folder).pairs)
    if (folder / "mask").is_dir():
        return research_split(folder, "test", labels_required=False)
    images = _image_files(folder)
    if not images:
        hint = " (a research DATA folder: pass its test/ split)" if is_research_root(folder) else ""
        raise DataError(f"{folder}: no images (.png/.jpg/.tif) and no mask/ or {MANIFEST_NAME}{hint}")
    return [Pair(name, path, None, INDEXED, "test") for name, path in images.items()]
