"""The confidence pyramid beside a class map: how sure the model was of each pixel's class.

``confidence.zarr`` in a result folder has the class map's level shapes, chunks and codecs and
holds uint8 values: 0 where no model ran (not segmented: background tiles, never-run areas), else
``1 + 254 * (1 - H / log K)``, with H the entropy of the pixel's blended class probabilities over
K classes (background included): 255 is certain, 1 a coin toss. The engine writes it in the same
chunk writes as the class map, so resume, the finished-rows log and damaged-chunk repair keep the
two consistent; its chunks have their own checksums log.

It is a :class:`ClassMap` for the pixel machinery (direct chunk writes, checksums, nearest-neighbour
pyramid), with metadata of its own; the reviewed regions and run records stay the class map's.
"""

from __future__ import annotations

import os
import shutil
import uuid

import zarr

from napari_samlung.results.classmap import ZSTD_LEVEL, ClassMap, ClassMapError, now

FORMAT = "samlung-confidence"
VERSION = 1
NOT_SEGMENTED = 0
LEAST, MOST = 1, 255  # a coin toss, certain


class ConfidenceMissing(ClassMapError):
    """Results without a confidence map (made before there were any), or one of another class map."""


class ConfidenceMap(ClassMap):
    """The confidence pyramid of a result folder. Open with :meth:`create_for` or :meth:`open_for`."""

    STORE = "confidence.zarr"
    CHECKSUMS = "confidence-checksums.log"

    @classmethod
    def create(cls, *args, **kwargs) -> "ConfidenceMap":
        raise TypeError("a confidence map is made for its class map: ConfidenceMap.create_for(classmap)")

    @classmethod
    def open(cls, *args, **kwargs) -> "ConfidenceMap":
        raise TypeError("a confidence map is opened with its class map: ConfidenceMap.open_for(classmap)")

    @classmethod
    def create_for(cls, classmap: ClassMap) -> "ConfidenceMap":
        """A new, all not-segmented confidence map for ``classmap`` (replacing any there), built under
        a temporary name and renamed into place."""
        root = classmap.root
        tmp = root / f".confidence-{uuid.uuid4().hex}.zarr"
        group = zarr.open_group(tmp, mode="w")
        shapes = [tuple(level.shape) for level in classmap.levels]
        for k, level in enumerate(classmap.levels):  # the class map's chunks: one write covers both
            group.create_array(str(k), shape=level.shape, chunks=level.chunks, dtype="uint8",
                               fill_value=NOT_SEGMENTED, compressors=zarr.codecs.ZstdCodec(level=ZSTD_LEVEL),
                               chunk_key_encoding={"name": "default", "separator": "/"})
        group.attrs["samlung"] = {"format": FORMAT, "version": VERSION, "shape": list(shapes[0]),
                                  "levels": [list(s) for s in shapes], "scale": classmap.scale,
                                  "classmap_created": classmap.meta.get("created"), "created": now()}
        target = root / cls.STORE
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        (root / cls.CHECKSUMS).unlink(missing_ok=True)
        return cls(root, zarr.open_group(target, mode="r+"))

    @classmethod
    def open_for(cls, classmap: ClassMap, mode: str = "r") -> "ConfidenceMap":
        """The confidence map of ``classmap``; :class:`ConfidenceMissing` when there is none, or
        when it was made for an earlier class map in that folder."""
        path = classmap.root / cls.STORE
        if not (path / "zarr.json").is_file():
            raise ConfidenceMissing(f"{classmap.root}: no confidence map (results made before confidence "
                                    "maps were stored)")
        try:
            group = zarr.open_group(path, mode=mode)
            meta = group.attrs["samlung"]
        except Exception as exc:  # zarr raises several types for damaged stores
            raise ClassMapError(f"{path} is not a readable confidence map: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ClassMapError(f"{path} is not a napari-samlung confidence map of version {VERSION}")
        if (meta.get("levels") != [list(level.shape) for level in classmap.levels]
                or [list(group[str(k)].chunks) for k in range(len(classmap.levels))]
                != [list(level.chunks) for level in classmap.levels]
                or meta.get("classmap_created") != classmap.meta.get("created")):
            raise ConfidenceMissing(f"{path} belongs to an earlier class map in that folder")
        return cls(classmap.root, group)


def has_confidence(classmap: ClassMap) -> bool:
    """Whether ``classmap`` has its (readable) confidence map; without one a run keeps none of the
    class map's finished chunks and segments its whole box again."""
    try:
        ConfidenceMap.open_for(classmap)
    except ClassMapError:
        return False
    return True
