"""One GPU session's checks and timings, next to the peer anchors, in a single run.

Runs, in order of importance, each stage guarded by the time left (results are written to
``$OUT/gpu_suite.json`` after every stage, so a run cut short still reports what it measured):

1. correctness on the device: vit_b logits at 1024 px (fast attention, float32 and bf16) against the
   CPU float32 reference; the engine's class map on CUDA against the CPU's (tiny model);
2. the peer anchors in this run: the official SAM encoder's eager bf16 row and the SAM-Lung-shaped
   inference row from ``gpu_anchor.py`` (its own code, imported), and ``gpu_train.py --eager-only``;
3. SamLung vit_b inference, bf16, batch 16: eager, and compiled with fast (folded) and with flex
   attention (FlexAttention in the global blocks);
4. the whole-slide engine on a generated 20,000 x 20,000 JPEG slide against the model alone, with
   the attention that was faster compiled in this run;
5. the engine's pipeline overhead with a null model on the GPU against tifffile's decoding;
   compiled flex attention's logits against the CPU float32 reference;
6. the fine-tuning program's training step (train_speed.py), vit_b, bf16, batch 8: compiled with
   block checkpointing, and eager; compiled inference with the reference attention.

Usage (on the GPU machine): python benchmarks/gpu_suite.py --anchors DIR --budget 330
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import engine_speed  # noqa: E402
import model_speed  # noqa: E402
import train_speed  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp/gpu-suite"))
RESULTS: dict = {"stages": {}}


def save() -> None:
    (OUT / "gpu_suite.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def stage(name: str, needs_s: float, fn, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left < needs_s:
        print(f"[skip] {name}: {left:.0f} s left, needs ~{needs_s:.0f} s", flush=True)
        RESULTS["stages"][name] = {"skipped": f"{left:.0f} s left"}
        save()
        return
    t = time.monotonic()
    print(f"[stage] {name} ({left:.0f} s left)", flush=True)
    try:
        RESULTS["stages"][name] = {"result": fn(), "seconds": round(time.monotonic() - t, 1)}
    except Exception as exc:  # keep going: a later stage may still work
        traceback.print_exc()
        RESULTS["stages"][name] = {"error": repr(exc)[:500], "seconds": round(time.monotonic() - t, 1)}
    print(f"[done] {name} in {time.monotonic() - t:.0f} s: {json.dumps(RESULTS['stages'][name], default=str)[:600]}",
          flush=True)
    save()


def run_anchor(anchors: Path, script: str, timeout: float, quick: bool) -> dict:
    flags = ["--eager-only"] + (["--quick"] if quick else [])
    done = subprocess.run([sys.executable, str(anchors / script), *flags], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OUT": str(OUT)})
    (OUT / f"{Path(script).stem}.log").write_text(done.stdout + done.stderr)
    rows = [json.loads(line[4:]) for line in done.stdout.splitlines() if line.startswith("ROW ")]
    return {"returncode": done.returncode, "rows": rows}


def engine_check(device: str) -> dict:
    """The engine's class map on ``device`` (bf16 on CUDA) against the CPU's (float32), tiny model."""
    from napari_samlung.inference.engine import SegmentationParams, segment
    from napari_samlung.inference.predictor import TilePredictor
    from napari_samlung.model import SamLung, SamLungConfig
    from napari_samlung.synthetic import write_demo_slide
    from napari_samlung.slide import open_slide

    work = Path(tempfile.mkdtemp())
    write_demo_slide(work / "demo.svs", (1536, 1536))
    maps = {}
    for name in ("cpu", device):
        torch.manual_seed(0)
        model = SamLung(SamLungConfig.tiny())
        with torch.no_grad():  # a head that predicts both classes, so agreement means something
            model.head.classifier.bias.copy_(torch.tensor([0.0, 0.0]))
        with open_slide(work / "demo.svs") as slide:
            result = segment(slide, TilePredictor(model, model.config, name), work / f"{name}-{len(maps)}.samlung",
                             SegmentationParams(batch_size=8))
        maps[len(maps)] = result.classmap.read((0, 0, 1536, 1536))
    agree = float((maps[0] == maps[1]).mean())
    return {"agreement": agree, "tumor_fraction_cpu": float(maps[0].mean()), "ok": agree > 0.99}


def anchor_rows(anchors: Path, quick: bool) -> list[dict]:
    """The peer's own code (gpu_anchor.py) for the rows the targets compare against."""
    if quick and "--quick" not in sys.argv:
        sys.argv.append("--quick")
    sys.path.insert(0, str(anchors))
    import gpu_anchor

    gpu_anchor.bench("official enc bf16-autocast", gpu_anchor.official_encoder(), 16, torch.bfloat16)
    gpu_anchor.bench("SAM-Lung-shaped infer bf16-autocast", gpu_anchor.SamLungShaped(), 16, torch.bfloat16)
    return list(gpu_anchor.rows)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--anchors", type=Path, required=True, help="folder with gpu_anchor.py and gpu_train.py")
    parser.add_argument("--budget", type=float, default=330, help="seconds this run may take")
    parser.add_argument("--slide-size", type=int, default=20000)
    parser.add_argument("--stages", default="all", help="comma-separated stage names, run in that order (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny preset, small sizes: checks the script")
    args = parser.parse_args()
    dev, preset, img = ("cpu", "tiny", 256) if args.dry_run else ("cuda", "vit_b", 1024)
    if args.dry_run:
        args.slide_size = 2048
    start = time.monotonic()
    deadline = start + args.budget
    OUT.mkdir(parents=True, exist_ok=True)
    RESULTS["environment"] = model_speed.environment(dev)
    print(RESULTS["environment"], flush=True)
    wanted = None if args.stages == "all" else args.stages.split(",")  # in this order

    # the engine's slide is generated on the CPU cores while the GPU stages run
    cache = Path(tempfile.gettempdir()) / "samlung-bench"
    cache.mkdir(exist_ok=True)
    slide_job = subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(HERE)!r}); "
                                  f"import engine_speed as e; from pathlib import Path; "
                                  f"e.bench_slide(Path({str(cache)!r}), {args.slide_size})"])

    batch, train_batch = (2, 2) if args.dry_run else (16, 8)

    def fastest_compiled_attention() -> str:
        rates = {mode: RESULTS["stages"].get(f"infer_{mode}_compiled_b16", {}).get("result", {}).get("images_per_s", 0)
                 for mode in ("fast", "flex")}
        return max(rates, key=rates.get) if any(rates.values()) else "fast"

    def engine_gpu():
        slide_job.wait(timeout=max(1.0, deadline - time.monotonic() - 40))
        ns = argparse.Namespace(preset=preset, tile=img, overlap=img // 8, batch_size=batch,
                                workers=min(16, os.cpu_count() or 2), compile=not args.dry_run, device=dev,
                                attention=fastest_compiled_attention())
        with tempfile.TemporaryDirectory() as tmp:
            return engine_speed.gpu_utilisation(cache / f"bench-{args.slide_size}.svs", ns, Path(tmp), diagnose=True,
                                                profile_to=OUT / "engine_profile.txt")

    def engine_overhead():
        """The issue's pipeline-overhead figure where it is meant for: null model on the GPU, 16 cores."""
        slide_job.wait(timeout=max(1.0, deadline - time.monotonic() - 20))
        ns = argparse.Namespace(tile=img, overlap=img // 8, cpu_batch=batch, workers=min(16, os.cpu_count() or 2))
        with tempfile.TemporaryDirectory() as tmp:
            return engine_speed.overhead(cache / f"bench-{args.slide_size}.svs", ns, Path(tmp), device=dev)

    def train_fresh_process():
        """Compiled training in a process of its own: inductor's training compile must not meet the
        inference graphs compiled earlier in this process (seen failing in torch 2.11 when it does)."""
        out = OUT / "train_compiled.json"
        cmd = [sys.executable, str(HERE / "train_speed.py"), "--preset", preset, "--batch-size", str(train_batch),
               "--dtype", "bfloat16", "--device", dev, "--checkpointing", "--compile", "--iters", "6",
               "--warmup", "3", "--json", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(10.0, deadline - time.monotonic()))
        (OUT / "train_compiled.log").write_text(done.stdout[-20000:] + done.stderr[-20000:])
        return json.loads(out.read_text()) if out.exists() else {"returncode": done.returncode}

    stages = [
        ("check_model", 30, lambda: model_speed.check_outputs(preset, dev, img_size=img)),  # TF32 off inside
        ("check_engine_device_vs_cpu", 25, lambda: engine_check(dev)),
        ("anchor_inference_rows", 40, lambda: anchor_rows(args.anchors, args.dry_run)),
        ("infer_fast_eager_b16", 15,
         lambda: model_speed.time_config(preset, dev, "infer", "fast", batch, img, "bfloat16", False)),
        ("infer_fast_compiled_b16", 80,
         lambda: model_speed.time_config(preset, dev, "infer", "fast", batch, img, "bfloat16", True, warmup=2)),
        ("infer_flex_compiled_b16", 80,
         lambda: model_speed.time_config(preset, dev, "infer", "flex", batch, img, "bfloat16", True, warmup=2)),
        ("engine_whole_slide", 60, engine_gpu),
        ("engine_overhead_null_model", 30, engine_overhead),
        ("check_flex_compiled", 60,
         lambda: model_speed.check_outputs(preset, dev, img_size=img, compile=True, attention="flex")),
        ("anchor_gpu_train", 40, lambda: run_anchor(args.anchors, "gpu_train.py", 60, args.dry_run)),
        ("train_step_compiled_ckpt_b8", 90, train_fresh_process),
        ("train_step_eager_b8", 15,
         lambda: train_speed.measure_train_step(preset, train_batch, img, "bfloat16", dev, iters=5, warmup=2)),
        ("infer_reference_compiled_b16", 60,
         lambda: model_speed.time_config(preset, dev, "infer", "reference", batch, img, "bfloat16", True, warmup=2)),
    ]
    by_name = {name: (needs, fn) for name, needs, fn in stages}
    unknown = [name for name in (wanted or []) if name not in by_name]
    if unknown:
        parser.error(f"unknown stage(s): {', '.join(unknown)}; known: {', '.join(by_name)}")
    for name in wanted or by_name:
        stage(name, *by_name[name], deadline)
    slide_job.kill()
    RESULTS["wall_s"] = round(time.monotonic() - start, 1)
    save()
    print("SUMMARY", json.dumps(RESULTS, default=str)[:8000], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
