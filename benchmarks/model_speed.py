"""SAM-Lung speed: images/s and peak memory for inference and for a training step.

Times reference vs fast (or flex) attention for one preset / device / batch / dtype and prints a table.
Random weights (no SAM file needed): speed does not depend on the values.

    python benchmarks/model_speed.py --preset tiny --device cpu
    python benchmarks/model_speed.py --preset vit_b --device cuda --dtype bfloat16 --batch-size 16 \
        --train-batch-size 8 --compile --checkpointing --json speed.json
    python benchmarks/model_speed.py --preset vit_b --device cuda --check   # outputs vs CPU float32

Importable: ``time_config(...)`` times one configuration and returns a dict; ``check_outputs(...)``
compares device outputs with the CPU float32 reference.
Timing: CUDA events on CUDA, ``time.perf_counter`` elsewhere; warm-up excluded; median reported.
Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA, peak RSS growth on the CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from napari_samlung.model import SamLung
from napari_samlung.model.config import PRESETS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _autocast(device: torch.device, dtype: str):
    return nullcontext() if dtype == "float32" else torch.autocast(device.type, dtype=DTYPES[dtype])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], None], device: torch.device, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


class _PeakRss:
    """Peak resident-memory growth over a ``with`` block (sampled with psutil, else ru_maxrss)."""

    def __enter__(self) -> _PeakRss:
        try:
            import psutil
        except ImportError:
            psutil = None
        self._process = psutil.Process() if psutil else None
        self.baseline = self._rss()
        self.peak = self.baseline
        self._stop = threading.Event()
        if self._process:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _rss(self) -> int:
        if self._process:
            return self._process.memory_info().rss
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._process:
            self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth_gib(self) -> float:
        return (self.peak - self.baseline) / 2**30


def build_model(preset: str, device: str | torch.device, attention: str = "fast", compile: bool = False,
                checkpointing: bool = False, seed: int = 0) -> SamLung:
    """A randomly initialized SamLung on ``device`` with the runtime switches set."""
    torch.manual_seed(seed)
    model = SamLung(PRESETS[preset]()).to(device)
    model.set_attention(attention).set_block_checkpointing(checkpointing)
    if compile:
        torch._dynamo.reset()  # earlier shapes seen in this process must not make this compile dynamic
        model.compile_blocks()
    return model


def time_config(preset: str = "tiny", device: str = "cpu", mode: str = "infer", attention: str = "fast",
                batch_size: int = 1, img_size: int | None = None, dtype: str = "float32",
                compile: bool = False, checkpointing: bool = False, iters: int = 10,
                warmup: int = 3) -> dict[str, Any]:
    """Time one configuration: ``mode`` "infer" (no_grad forward) or "train" (forward, cross-entropy,
    backward, SGD step on the trainable parameters). Returns a dict of the settings and figures."""
    dev = torch.device(device)
    model = build_model(preset, dev, attention, compile, checkpointing)
    size = img_size or model.config.img_size
    result: dict[str, Any] = dict(preset=preset, device=str(dev), mode=mode, attention=attention,
                                  batch=batch_size, img_size=size, dtype=dtype, compile=compile,
                                  checkpointing=checkpointing and mode == "train")
    generator = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(batch_size, 3, size, size, device=dev, generator=generator)
    if mode == "infer":
        model.eval()

        def step() -> None:
            with torch.no_grad(), _autocast(dev, dtype):
                model(x)
    elif mode == "train":
        model.train()
        target = torch.randint(0, model.config.num_classes + 1, (batch_size, size, size), device=dev,
                               generator=generator)
        optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1e-3, momentum=0.9)
        scaler = torch.amp.GradScaler(dev.type, enabled=dtype == "float16")

        def step() -> None:
            with _autocast(dev, dtype):
                loss = F.cross_entropy(model(x), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    else:
        raise ValueError(f"mode must be 'infer' or 'train', got {mode!r}")

    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    try:
        with _PeakRss() as rss:
            seconds = median_seconds(step, dev, iters, warmup)
    except torch.cuda.OutOfMemoryError as exc:
        result["error"] = f"out of memory: {str(exc).splitlines()[0]}"
    else:
        on_cuda = dev.type == "cuda"
        result.update(ms_per_batch=seconds * 1e3, images_per_s=batch_size / seconds,
                      peak_gib=torch.cuda.max_memory_allocated(dev) / 2**30 if on_cuda else rss.growth_gib,
                      peak_kind="cuda max allocated" if on_cuda else "RSS growth",
                      wall_s=time.perf_counter() - t0)
    finally:
        model = None  # free it before _release
        _release(dev, compile)
    return result


def _release(device: torch.device, compiled: bool) -> None:
    """Free memory and compiled code between configurations (so each compiles from a clean cache)."""
    gc.collect()
    if compiled:
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _randomized_for_check(preset: str, seed: int = 0) -> SamLung:
    """Random weights everywhere that matters: position tables and adapters are not left at zero."""
    generator = torch.Generator().manual_seed(seed)
    model = SamLung(PRESETS[preset]()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
            elif ".up." in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return model


def check_outputs(preset: str = "tiny", device: str = "cpu", img_size: int | None = None, batch_size: int = 1,
                  compile: bool = False, attention: str = "fast") -> list[dict[str, Any]]:
    """Relative error of the device's logits (float32 and bf16 autocast, ``attention``) against
    the CPU float32 reference-attention logits for a fixed input."""
    model = _randomized_for_check(preset)
    size = img_size or model.config.img_size
    x = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.set_attention("reference")(x)
    dev = torch.device(device)
    model.to(dev).set_attention(attention)
    if compile:
        model.compile_blocks()
    rows = []
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    for dtype, tolerance in (("float32", 1e-4), ("bfloat16", 5e-2)):
        # float32 means float32 here: no TF32 in matmuls or convolutions
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            with torch.no_grad(), _autocast(dev, dtype):
                got = model(x.to(dev)).float().cpu()
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        error = ((got - want).norm() / want.norm()).item()
        rows.append(dict(preset=preset, device=str(dev), img_size=size, dtype=dtype, compile=compile,
                         relative_error=error, tolerance=tolerance, ok=error <= tolerance))
    model = None  # free it before _release
    _release(dev, compile)
    return rows


def environment(device: str) -> dict[str, Any]:
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = platform.processor() or platform.machine()
    return dict(device=str(dev), device_name=name, torch=torch.__version__, python=platform.python_version(),
                cpu_threads=torch.get_num_threads())


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'mode':5} {'attention':9} {'batch':>5} {'size':>5} {'dtype':8} {'compile':7} {'ckpt':4} " \
             f"{'ms/batch':>9} {'img/s':>8} {'peak GiB':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        settings = f"{r['mode']:5} {r['attention']:9} {r['batch']:5d} {r['img_size']:5d} {r['dtype']:8} " \
                   f"{'yes' if r['compile'] else 'no':7} {'yes' if r['checkpointing'] else 'no':4}"
        if "error" in r:
            print(f"{settings} {r['error']}")
        else:
            print(f"{settings} {r['ms_per_batch']:9.1f} {r['images_per_s']:8.2f} {r['peak_gib']:8.3f}")
    peak_kinds = sorted({r["peak_kind"] for r in rows if "peak_kind" in r})
    print(f"(peak: {', '.join(peak_kinds)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=1, help="inference batch")
    parser.add_argument("--train-batch-size", type=int, default=1,
                        help="training-step batch (0: no training rows)")
    parser.add_argument("--img-size", type=int, default=None,
                        help="tile side (default: the preset's img_size)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="autocast dtype")
    parser.add_argument("--attention", choices=["both", "fast", "reference", "flex"], default="both",
                        help="flex: FlexAttention in the global blocks, fast only with --compile")
    parser.add_argument("--compile", action="store_true", help="regional torch.compile of the encoder blocks")
    parser.add_argument("--checkpointing", action="store_true",
                        help="activation checkpointing per block (training)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--check", action="store_true",
                        help="compare device outputs with the CPU float32 reference")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: unknown device {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.img_size is not None and (args.img_size < 16 or args.img_size % 16):
        parser.error(f"--img-size must be a positive multiple of 16, got {args.img_size}")

    env = environment(args.device)
    print(json.dumps(env))
    results: dict[str, Any] = dict(environment=env)
    failed = False
    if args.check:
        rows = check_outputs(args.preset, args.device, args.img_size, args.batch_size, args.compile)
        for r in rows:
            print(f"check {r['preset']} {r['img_size']}px {r['dtype']:8} on {r['device']}: relative error "
                  f"{r['relative_error']:.2e} vs CPU float32 reference (tolerance {r['tolerance']:.0e}) "
                  f"{'OK' if r['ok'] else 'FAIL'}")
        results["check"] = rows
        failed = not all(r["ok"] for r in rows)
    else:
        modes = ["reference", "fast"] if args.attention == "both" else [args.attention]
        plan = [("infer", m, args.batch_size) for m in modes]
        if args.train_batch_size > 0:
            plan += [("train", m, args.train_batch_size) for m in modes]
        rows = []
        for mode, attention, batch in plan:
            rows.append(time_config(args.preset, args.device, mode, attention, batch, args.img_size,
                                    args.dtype, args.compile, args.checkpointing, args.iters, args.warmup))
            print("ROW " + json.dumps(rows[-1]), flush=True)
        print()
        print_table(rows)
        results["rows"] = rows
    if args.json:
        tmp = f"{args.json}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
