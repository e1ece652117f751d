"""Whole-slide engine benchmark: pipeline overhead, memory growth, GPU utilisation. Prints figures.

1. overhead: with a model that does nothing, the engine's megapixels/s over a large generated
   JPEG slide, divided by the megapixels/s of simply decoding the same level with tifffile's own
   threaded decoder (target >= 0.8); and the tensor operations the engine dispatches per tile;
2. memory: peak RSS of segmenting a slide 4x larger in area, divided by the smaller one's, each in
   a fresh process (target <= 1.2);
3. --gpu: whole-slide images/s with a real preset divided by the model-only images/s of the same
   model, batch and dtype, in the same process (target >= 0.9).

Usage: python benchmarks/engine_speed.py [--size 20000] [--tile 1024] [--overlap 128]
       [--workers N] [--skip-memory] [--gpu --preset vit_b --batch-size 16 --compile --attention flex] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import model_speed
from napari_samlung.inference.engine import SegmentationParams, segment
from napari_samlung.inference.loader import TileLoader
from napari_samlung.inference.predictor import TilePredictor
from napari_samlung.inference.tiling import TileGrid
from napari_samlung.model import SamLung, SamLungConfig
from napari_samlung.model.config import PRESETS
from napari_samlung.synthetic import write_demo_slide
from napari_samlung.slide import open_slide


class NullModel(nn.Module):
    """Returns all-zero logits without computing or allocating them: the engine does all its work
    (normalization, stitching, writing), the model none."""

    def __init__(self, classes: int = 2):
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(()).expand(x.shape[0], self.classes, x.shape[2], x.shape[3])


def bench_slide(folder: Path, size: int) -> Path:
    """A size x size JPEG pyramid of synthetic tissue (no glass), made once and kept in ``folder``."""
    path = folder / f"bench-{size}.svs"
    if not path.exists():
        t = time.perf_counter()
        write_demo_slide(path, (size, size), mpp=0.5, background=False, tumor=False, compression="jpeg")
        print(f"generated {path} ({size} x {size}) in {time.perf_counter() - t:.0f} s", flush=True)
    return path


def tifffile_decode_mpix_s(path: Path, workers: int) -> float:
    """Megapixels/s of decoding level 0 with tifffile's threaded segment decoder, nothing kept."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        t = time.perf_counter()
        for _ in page.segments(maxworkers=workers):
            pass
        seconds = time.perf_counter() - t
        return page.shape[0] * page.shape[1] / seconds / 1e6


def engine_run(path: Path, predictor: TilePredictor, params: SegmentationParams, out: Path) -> dict[str, Any]:
    with open_slide(path) as slide:
        t = time.perf_counter()
        result = segment(slide, predictor, out, params, overwrite=True)
        seconds = time.perf_counter() - t
        h, w = slide.shape
    return dict(seconds=seconds, mpix_s=h * w / seconds / 1e6, tiles=result.tiles,
                images_per_s=result.tiles.get("model", 0) / seconds)


def null_predictor(tile: int, device: str = "cpu") -> TilePredictor:
    config = SamLungConfig.tiny(img_size=tile)
    return TilePredictor(NullModel(), config, device, info={"model": "null"})


def loader_mpix_s(path: Path, args: argparse.Namespace) -> float:
    """Megapixels/s of the engine's tile loader alone over level 0: read, decode, batch; nothing else."""
    with open_slide(path) as slide:
        grid = TileGrid((0, 0, *slide.shape), args.tile, args.overlap)

        def read(rc: tuple[int, int]):
            y, x, _, _ = grid.tile_box(*rc)
            return slide.read_scaled(y, x, args.tile, args.tile, 1.0)

        t = time.perf_counter()
        for _ in TileLoader(list(grid.tiles()), read, tile=args.tile, batch_size=args.cpu_batch, workers=args.workers):
            pass
        return slide.shape[0] * slide.shape[1] / (time.perf_counter() - t) / 1e6


def overhead(path: Path, args: argparse.Namespace, workdir: Path, device: str = "cpu") -> dict[str, Any]:
    """The null-model engine against tifffile's decoding; on ``device`` "cuda" the normalization,
    blending and arg-max run on the GPU, as in real GPU runs."""
    decode = max(tifffile_decode_mpix_s(path, args.workers) for _ in range(2))
    params = SegmentationParams(tile_size=args.tile, overlap=args.overlap, batch_size=args.cpu_batch,
                                workers=args.workers)
    run = engine_run(path, null_predictor(args.tile, device), params, workdir / "null.samlung")
    loader = loader_mpix_s(path, args)
    return dict(device=device, decode_mpix_s=decode, engine_mpix_s=run["mpix_s"], ratio=run["mpix_s"] / decode,
                engine_seconds=run["seconds"], tiles=run["tiles"], loader_mpix_s=loader, loader_ratio=loader / decode)


VIEW_OPS = {"alias", "as_strided", "detach", "expand", "lift_fresh", "permute", "select", "slice", "squeeze",
            "t", "transpose", "unsqueeze", "view", "_unsafe_view"}


def engine_ops_per_tile(path: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Tensor operations the engine itself dispatches per model tile (normalization and model left
    out): on a GPU each one that is not a view is a kernel launch by the host thread."""
    from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: dict[str, int] = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            self.ops[name] = self.ops.get(name, 0) + 1
            return func(*args, **(kwargs or {}))

    class Uncounted(TilePredictor):
        def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
            with _disable_current_modes():
                return super().__call__(tiles)

    config = SamLungConfig.tiny(img_size=args.tile)
    predictor = Uncounted(NullModel(), config, "cpu", info={"model": "null"})
    params = SegmentationParams(tile_size=args.tile, overlap=args.overlap, batch_size=16, workers=args.workers,
                                skip_background=False)
    counter = Count()
    with counter:
        run = engine_run(path, predictor, params, workdir / "ops.samlung")
    tiles = run["tiles"]["model"]
    kernels = sum(n for name, n in counter.ops.items() if name not in VIEW_OPS)
    return dict(tiles=tiles, ops_per_tile=sum(counter.ops.values()) / tiles, kernels_per_tile=kernels / tiles,
                ops=counter.ops)


def child_peak_rss(path: Path, args: argparse.Namespace, workdir: Path) -> float:
    """Peak RSS (MiB) of a fresh process segmenting ``path`` with the null model.

    Read from the child's own ``VmHWM``: ``ru_maxrss`` would also count the pages the child shared
    with this (possibly large) process between fork and exec.
    """
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, %r);"
        "import engine_speed as e; from napari_samlung.inference.engine import SegmentationParams;"
        "e.engine_run(Path(%r), e.null_predictor(%d), SegmentationParams(tile_size=%d, overlap=%d, batch_size=%d,"
        " workers=%d), Path(%r));"
        "print(e.peak_rss_kib())"
    ) % (str(Path(__file__).parent), str(path), args.tile, args.tile, args.overlap, args.cpu_batch, args.workers,
         str(workdir / f"rss-{path.stem}.samlung"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1]) / 1024


def peak_rss_kib() -> int:
    """This process's peak resident memory since its exec (Linux ``VmHWM``; elsewhere ``ru_maxrss``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def gpu_utilisation(path: Path, args: argparse.Namespace, workdir: Path, diagnose: bool = False,
                    profile_to: Path | None = None) -> dict[str, Any]:
    """Whole-slide images/s over model-only images/s (timed as model_speed.py times), same model, batch,
    dtype and compiled code, in this process. The model-only figure includes normalization.

    ``diagnose`` adds runs with the chunk writing, then also the stitching, switched off (the
    outputs are dropped), to show which stage holds the pipeline back; ``profile_to`` a profiled
    run over a small region (:func:`profile_region`).
    """
    from napari_samlung.inference.stitching import Stitcher
    from napari_samlung.inference.classmap_writer import ChunkWriter

    torch.manual_seed(0)
    model = SamLung(PRESETS[args.preset]()).set_attention(args.attention)
    device = getattr(args, "device", "cuda")
    predictor = TilePredictor(model, model.config, device, compile=args.compile, info={"preset": args.preset})
    params = SegmentationParams(tile_size=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                                workers=args.workers)
    with open_slide(path) as slide:  # warm-up (compilation, cuDNN autotuning) on a small region
        segment(slide, predictor, workdir / "warm.samlung", params, region=(0, 0, 3 * args.tile, 3 * args.tile),
                overwrite=True)
    run = engine_run(path, predictor, params, workdir / "gpu.samlung")
    x = torch.randint(0, 256, (args.batch_size, args.tile, args.tile, 3), dtype=torch.uint8, device=device)
    model_only = args.batch_size / model_speed.median_seconds(lambda: predictor(x), torch.device(device), 10, 3)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    result = dict(device=name, preset=args.preset, batch=args.batch_size, compile=args.compile, attention=args.attention,
                  whole_slide_images_per_s=run["images_per_s"], model_only_images_per_s=model_only,
                  ratio=run["images_per_s"] / model_only, seconds=run["seconds"], tiles=run["tiles"])
    if diagnose:
        place = ChunkWriter._place_all

        def wait_only(self, blocks, host, event):
            if event is not None:
                event.synchronize()

        ChunkWriter._place_all = wait_only
        try:
            result["no_writing_images_per_s"] = engine_run(path, predictor, params, workdir / "d1.samlung")["images_per_s"]
            stitcher_add = Stitcher.add  # the engine's ConfidenceStitcher adds through it
            Stitcher.add = lambda self, r, c, kind, probs=None: []
            try:
                result["no_stitching_images_per_s"] = engine_run(path, predictor, params,
                                                                 workdir / "d2.samlung")["images_per_s"]
            finally:
                Stitcher.add = stitcher_add
        finally:
            ChunkWriter._place_all = place
    if profile_to is not None:
        result["profile"] = profile_region(path, predictor, params, workdir, profile_to)
    return result


def profile_region(path: Path, predictor: TilePredictor, params: SegmentationParams, workdir: Path,
                   table_path: Path, tiles: int = 6) -> dict[str, Any]:
    """One engine run over ``tiles`` x ``tiles`` tiles under the PyTorch profiler: how busy the
    device was, and the host-side operations that took the most time (a table in ``table_path``)."""
    from torch.profiler import ProfilerActivity, profile

    side = tiles * (params.tile_size - params.overlap) + params.overlap
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if predictor.device.type == "cuda" else [])
    with open_slide(path) as slide, profile(activities=activities) as prof:
        t = time.perf_counter()
        segment(slide, predictor, workdir / "profile.samlung", params, region=(0, 0, side, side), overwrite=True)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
    averages = prof.key_averages()
    device_us = sum(getattr(e, "self_device_time_total", 0) for e in averages)
    table_path.write_text(averages.table(sort_by="self_cpu_time_total", row_limit=30))
    return dict(tiles=tiles * tiles, seconds=seconds, device_busy_fraction=device_us / 1e6 / seconds,
                table=str(table_path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=20000, help="side of the large slide (level-0 pixels)")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="decode threads, both sides")
    parser.add_argument("--cpu-batch", type=int, default=4, help="batch size of the null-model runs")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "samlung-bench")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--gpu", action="store_true", help="also measure GPU utilisation (needs CUDA)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="vit_b")
    parser.add_argument("--batch-size", type=int, default=16, help="GPU batch")
    parser.add_argument("--compile", action="store_true", help="regional torch.compile on the GPU")
    parser.add_argument("--attention", choices=("fast", "flex"), default="fast",
                        help="the GPU model's attention (flex is fast only with --compile)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = dict(cpu_count=os.cpu_count(), torch=torch.__version__, workers=args.workers,
                                   tile=args.tile, overlap=args.overlap)
    large = bench_slide(args.cache_dir, args.size)
    small = None if args.skip_overhead and args.skip_memory else bench_slide(args.cache_dir, args.size // 2)
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        workdir = Path(tmp)
        if not args.skip_overhead:
            r = results["overhead"] = overhead(large, args, workdir)
            print(f"overhead: tifffile decode {r['decode_mpix_s']:.1f} MPix/s, engine (null model) "
                  f"{r['engine_mpix_s']:.1f} MPix/s, ratio {r['ratio']:.2f} (target >= 0.8); the tile loader alone "
                  f"{r['loader_mpix_s']:.1f} MPix/s ({r['loader_ratio']:.2f})", flush=True)
            r = results["engine_ops"] = engine_ops_per_tile(small, args, workdir)
            print(f"engine's own tensor ops per tile ({args.size // 2}^2 slide, batch 16): {r['ops_per_tile']:.1f}, "
                  f"of which not views (kernel launches on a GPU) {r['kernels_per_tile']:.1f}", flush=True)
        if not args.skip_memory:
            rss_small, rss_large = child_peak_rss(small, args, workdir), child_peak_rss(large, args, workdir)
            results["memory"] = dict(small_side=args.size // 2, large_side=args.size, small_peak_rss_mib=rss_small,
                                     large_peak_rss_mib=rss_large, ratio=rss_large / rss_small)
            print(f"memory: peak RSS {rss_small:.0f} MiB ({args.size // 2}^2) -> {rss_large:.0f} MiB "
                  f"({args.size}^2, 4x area), ratio {rss_large / rss_small:.2f} (target <= 1.2)", flush=True)
        if args.gpu:
            r = results["gpu"] = gpu_utilisation(large, args, workdir)
            print(f"gpu ({r['device']}, {args.preset}, batch {args.batch_size}, compile={args.compile}): whole slide "
                  f"{r['whole_slide_images_per_s']:.1f} img/s, model only {r['model_only_images_per_s']:.1f} img/s, "
                  f"ratio {r['ratio']:.2f} (target >= 0.9)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
