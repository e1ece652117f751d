"""Small generated slides for tests: every supported layout, tiled and pyramidal, built in code.

Most files come from the project's own writer; the layouts it does not write (NDPI, Aperio RGB
JPEG 2000, OME channel planes, SubIFD pyramids without OME, stripped and 16-bit images) are
written here with tifffile, and NDPI with a minimal writer of its own (tifffile cannot write
NDPI's 64-bit IFD offsets).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from skimage import data


def he_texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 stained-tissue-like texture (the bundled IHC image, flipped and tiled)."""
    base = data.immunohistochemistry()
    rng = np.random.default_rng(seed)
    out = np.empty((h, w, 3), np.uint8)
    for y in range(0, h, 512):
        for x in range(0, w, 512):
            patch = base[:: rng.choice([-1, 1]), :: rng.choice([-1, 1])]
            out[y: y + 512, x: x + 512] = patch[: min(512, h - y), : min(512, w - x)]
    return out


def tissue_everywhere(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 H&E-like tissue with no glass at all: pink stroma, pale (nearly white,
    barely saturated) patches and purple nuclei."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    image = np.empty((h, w, 3), np.float32)
    image[:] = (225, 160, 195)  # eosin-pink stroma
    pale = np.sin(yy / 37.0 + 2 * np.sin(xx / 53.0)) > 0.4
    image[pale] = (240, 226, 236)  # pale stroma: saturation ~0.06
    nuclei = rng.random((h // 8, w // 8)) < 0.15
    image[np.kron(nuclei, np.ones((8, 8), bool))[:h, :w]] = (110, 60, 150)
    image += rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def slide_with_tissue(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A slide image of glass (near-white, slightly noisy) with two elliptic tissue pieces, and the
    boolean tissue mask it was drawn from."""
    rng = np.random.default_rng(seed)
    glass = np.clip(rng.normal(238, 2, (h, w, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - 0.35 * h) / (0.25 * h)) ** 2 + ((xx - 0.3 * w) / (0.2 * w)) ** 2 < 1
    mask |= ((yy - 0.7 * h) / (0.15 * h)) ** 2 + ((xx - 0.72 * w) / (0.18 * w)) ** 2 < 1
    image = np.where(mask[..., None], he_texture(h, w, seed), glass)
    return image, mask


def write_generic(path: Path, levels: list[np.ndarray], *, subifds: bool, tile: int = 64,
                  compression: str = "zlib", **level0_options) -> Path:
    """A plain tiled pyramid written with tifffile: levels as SubIFDs (tifffile series levels) or as
    pages following level 0."""
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(levels):
            options = dict(tile=(tile, tile), compression=compression, photometric="rgb", metadata=None)
            if i == 0:
                options.update(level0_options)
                if subifds:
                    options.update(subifds=len(levels) - 1)
            else:
                options.update(subfiletype=1)
            tw.write(level, **options)
    return path


def write_svs_rgb_j2k(path: Path, levels: list[np.ndarray], mpp: float, tile: int = 64) -> Path:
    """An Aperio SVS whose tiles are JPEG 2000 with RGB components (compression 33005)."""
    h0, w0 = levels[0].shape[:2]
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(levels):
            h, w = level.shape[:2]
            description = (f"Aperio Image Library v12.0.15 \r\n{w0}x{h0} [0,0 {w0}x{h0}] ({tile}x{tile})"
                           f"{f' -> {w}x{h}' if i else ''} J2K/KDU Q=70|AppMag = 20|MPP = {mpp}")
            tw.write(level, tile=(tile, tile), compression=33005, photometric="rgb", description=description,
                     metadata=None)
            if i == 0:  # the thumbnail is always the second page of an SVS
                thumb = np.ascontiguousarray(levels[-1])
                tw.write(thumb, photometric="rgb", compression="jpeg", metadata=None,
                         description=f"Aperio Image Library v12.0.15 \r\n{w0}x{h0} -> {w}x{h} - ")
    return path


def write_ome_planes(path: Path, levels: list[np.ndarray], mpp_nm: float, tile: int = 64) -> Path:
    """An OME-TIFF with the RGB channels as separate planes (axes CYX) and a SubIFD pyramid; the
    pixel size is given in nanometres."""
    with tifffile.TiffWriter(path, ome=True) as tw:
        for i, level in enumerate(levels):
            planes = np.ascontiguousarray(np.moveaxis(level, -1, 0))
            options = dict(tile=(tile, tile), compression="zlib", photometric="minisblack")
            if i == 0:
                options.update(subifds=len(levels) - 1, metadata={
                    "axes": "CYX", "PhysicalSizeX": mpp_nm, "PhysicalSizeXUnit": "nm",
                    "PhysicalSizeY": mpp_nm, "PhysicalSizeYUnit": "nm"})
            else:
                options.update(subfiletype=1, metadata=None)
            tw.write(planes, **options)
    return path


# ---------------------------------------------------------------------------------------------
# NDPI: each level is one JPEG with restart markers in one strip; the McuStarts tag lists where
# each restart interval begins, which is what makes the JPEG randomly accessible as tiles.


_STRUCT_CODES = {3: "H", 4: "I", 11: "f"}  # TIFF SHORT, LONG, FLOAT


def _split_jpeg(jpeg: bytes) -> tuple[bytes, int, bytes, bytes]:
    """(header up to SOS, offset of SOF0 in it, SOS segment, entropy-coded data) of a baseline JPEG."""
    i, sof = 2, -1
    while True:
        marker, length = struct.unpack(">HH", jpeg[i: i + 4])
        if marker == 0xFFC0:
            sof = i
        if marker == 0xFFDA:
            return jpeg[:i], sof, jpeg[i: i + 2 + length], jpeg[i + 2 + length: -2]
        i += 2 + length


def ndpi_jpeg(image: np.ndarray, tile_width: int, quality: int = 90) -> tuple[bytes, list[int]]:
    """One JPEG of ``image`` with a restart marker after every 8 x ``tile_width`` block, and the byte
    offsets where the blocks start. Built from independently encoded blocks: with the same
    (standard) tables, a block's entropy data is exactly what a restart interval holds."""
    h, w = image.shape[:2]
    if h % 8 or w % tile_width or tile_width % 8:
        raise ValueError("NDPI test levels need sides that are multiples of 8 and of the tile width")
    header, starts, parts = b"", [], []
    size = 0
    for y in range(0, h, 8):
        for x in range(0, w, tile_width):
            block = np.ascontiguousarray(image[y: y + 8, x: x + tile_width])
            head, sof, sos, entropy = _split_jpeg(imagecodecs.jpeg8_encode(block, level=quality,
                                                                           subsampling="444"))
            if not header:
                restart = struct.pack(">HHH", 0xFFDD, 4, tile_width // 8)
                header = head[: sof + 5] + struct.pack(">HH", h, w) + head[sof + 9:] + restart + sos
                size = len(header)
            marker = bytes([0xFF, 0xD0 + len(parts) % 8])
            starts.append(size)
            parts.append(entropy + marker)
            size += len(parts[-1])
    parts[-1] = parts[-1][:-2] + b"\xff\xd9"  # the last interval ends the image
    return header + b"".join(parts), starts


def write_ndpi(path: Path, levels: list[np.ndarray], mpp: float, *, tile_width: int = 64,
               macro: np.ndarray | None = None, map_image: np.ndarray | None = None) -> Path:
    """A Hamamatsu NDPI as the format has it: a classic little-endian TIFF whose IFDs end with
    64-bit next-IFD offsets plus the high 32 bits of each tag value; every page carries the NDPI
    tags (FileFormat, Make, Magnification: 20x, 5x, ... for levels, -1 macro, -2 map); levels are
    single-strip restart-marker JPEGs with McuStarts; resolution in pixels per centimetre."""
    pages = []
    for i, level in enumerate(levels):
        jpeg, starts = ndpi_jpeg(level, math.gcd(level.shape[1], tile_width))
        level_mpp = mpp * levels[0].shape[1] / level.shape[1]
        pages.append((level.shape, 20.0 / 4 ** i, 7, 6, jpeg, starts, level_mpp))
    if macro is not None:
        pages.append((macro.shape, -1.0, 7, 6, imagecodecs.jpeg8_encode(macro, level=80), None, None))
    if map_image is not None:
        pages.append((map_image.shape, -2.0, 1, 1, map_image.tobytes(), None, None))
    buf = bytearray(b"II*\x00" + bytes(8))
    next_ifd_at = 4
    for shape, lens, compression, photometric, blob, starts, page_mpp in pages:
        h, w = shape[:2]
        spp = shape[2] if len(shape) == 3 else 1
        data_offset = len(buf)
        buf += blob + b"\x00" * (len(blob) % 2)
        tags = [(256, 4, [w]), (257, 4, [h]), (258, 3, [8] * spp), (259, 3, [compression]),
                (262, 3, [photometric]), (271, 2, "Hamamatsu"), (272, 2, "C13220"), (273, 4, [data_offset]),
                (277, 3, [spp]), (278, 4, [h]), (279, 4, [len(blob)]), (65420, 4, [1]), (65421, 11, [lens])]
        if page_mpp:
            pixels_per_cm = (round(1e7 / page_mpp), 1000)
            tags += [(282, 5, [pixels_per_cm]), (283, 5, [pixels_per_cm]), (296, 3, [3])]
        if starts is not None:
            tags.append((65426, 4, starts))
        entries = []
        for code, kind, values in sorted(tags):
            if kind == 2:
                raw = values.encode() + b"\x00"
            elif kind == 5:
                raw = b"".join(struct.pack("<II", *v) for v in values)
            else:
                raw = struct.pack(f"<{len(values)}{_STRUCT_CODES[kind]}", *values)
            count = len(raw) if kind == 2 else len(values)
            if len(raw) <= 4:
                entries.append(struct.pack("<HHI", code, kind, count) + raw.ljust(4, b"\x00"))
            else:
                entries.append(struct.pack("<HHII", code, kind, count, len(buf)))
                buf += raw + b"\x00" * (len(raw) % 2)
        struct.pack_into("<Q", buf, next_ifd_at, len(buf))
        buf += struct.pack("<H", len(entries)) + b"".join(entries)
        next_ifd_at = len(buf)
        buf += bytes(8) + bytes(4 * len(entries))  # next IFD offset (64-bit), high bits of values
    path.write_bytes(bytes(buf))
    return path


def reduce2(image: np.ndarray, times: int = 1) -> np.ndarray:
    """Halve an (h, w, c) image ``times`` times by 2x2 averaging, halves rounded up; an odd last row or
    column is averaged with itself (edge-padded), as the pyramidal TIFF writer does."""
    for _ in range(times):
        pad = ((0, image.shape[0] % 2), (0, image.shape[1] % 2)) + ((0, 0),) * (image.ndim - 2)
        padded = np.pad(image, pad, mode="edge")
        h, w = padded.shape[:2]
        mean = padded.reshape(h // 2, 2, w // 2, 2, -1).mean(axis=(1, 3))
        image = np.floor(mean + 0.5).astype(np.uint8)
    return image
