"""Images/s and peak memory of samlung-finetune's training step.

The step is the trainer's own (``training.engine.train_step``): uint8 (B, H, W, 3) batch already on the device -> normalize ->
SAM-Lung forward under autocast -> 0.5 Dice + 0.5 cross-entropy -> backward -> SGD step on the
adapters and head (GradScaler with float16). Data loading is left out: it runs in DataLoader
workers, ahead of the device.

    python benchmarks/train_speed.py --preset tiny --device cpu --batch-size 2 --img-size 256
    python benchmarks/train_speed.py --preset vit_b --device cuda --batch-size 8 --dtype bfloat16 \
        --checkpointing --compile --json train.json

Importable: ``measure_train_step(...)`` returns the figures as a dict (the GPU suite calls it).
Timing: CUDA events on CUDA, ``time.perf_counter`` on the CPU; warm-up steps excluded; median.
Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA, peak RSS growth on the CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_speed import build_model, median_seconds  # noqa: E402
from napari_samlung.model.config import PRESETS  # noqa: E402
from training.engine import train_step  # noqa: E402
from training.losses import SegmentationLoss  # noqa: E402

DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure_train_step(
    preset: str = "tiny",
    batch_size: int = 2,
    img_size: int | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    checkpointing: bool = False,
    compile: bool = False,
    iters: int = 10,
    warmup: int = 3,
    attention: str = "fast",
    seed: int = 0,
) -> dict[str, Any]:
    """Time ``iters`` training steps after ``warmup`` ones; returns images/s, step time, peak memory."""
    dev = torch.device(device)
    model = build_model(preset, dev, attention, compile, checkpointing, seed).train()
    config = model.config  # the preset's, num_classes=1
    size = img_size or config.img_size
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    compile_s = 0.0
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    criterion = SegmentationLoss(config.num_classes).to(dev)
    amp_dtype = DTYPES[dtype]
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype == torch.float16)
    images = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8, device=dev)
    labels = torch.randint(0, 2, (batch_size, size, size), dtype=torch.uint8, device=dev)

    def step() -> None:
        train_step(model, config, criterion, optimizer, scaler, images, labels, amp_dtype)

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    rss_before = _peak_rss_bytes()
    started = time.perf_counter()
    for _ in range(max(warmup, 1 if compile else 0)):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    if compile:
        compile_s = time.perf_counter() - started  # compilation happens in the first steps
    median = median_seconds(step, dev, iters, warmup=0)
    result: dict[str, Any] = {
        "benchmark": "train_step", "preset": preset, "batch_size": batch_size, "img_size": size,
        "dtype": dtype,
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "attention": attention, "checkpointing": checkpointing, "compile": compile, "iters": iters,
        "warmup": warmup, "step_ms": median * 1000, "images_per_s": batch_size / median,
        "trainable_params": sum(p.numel() for p in model.trainable_parameters()), "torch": torch.__version__,
    }
    if compile:
        result["warmup_s_with_compile"] = compile_s
    if dev.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    else:
        result["peak_rss_growth_gib"] = (_peak_rss_bytes() - rss_before) / 2**30
        result["threads"] = torch.get_num_threads()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=None, help="default: the preset's tile size")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="autocast dtype")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attention", choices=("fast", "reference"), default="fast")
    parser.add_argument("--checkpointing", action="store_true", help="recompute encoder blocks in backward")
    parser.add_argument("--compile", action="store_true", help="regional torch.compile of the encoder blocks")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default=None, metavar="PATH", help="write the result here")
    args = parser.parse_args(argv)
    result = measure_train_step(args.preset, args.batch_size, args.img_size, args.dtype, args.device,
                                args.checkpointing, args.compile, args.iters, args.warmup, args.attention)
    memory = (f"peak {result['peak_gib']:.2f} GiB" if "peak_gib" in result
              else f"peak RSS growth {result['peak_rss_growth_gib']:.3f} GiB")
    print(f"{args.preset} {result['img_size']}px batch {args.batch_size} {args.dtype} "
          f"on {result['device_name']}"
          f"{' +checkpointing' if args.checkpointing else ''}{' +compile' if args.compile else ''}: "
          f"{result['images_per_s']:.2f} images/s ({result['step_ms']:.1f} ms/step), {memory}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
