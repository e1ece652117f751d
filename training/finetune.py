"""samlung-finetune: fine-tune SAM-Lung on tumor masks, on one or many GPUs.

Single process::

    samlung-finetune --data-path DATA --sam-weights sam_vit_b_01ec64.pth --output-dir run1

Several GPUs (DDP; one process per GPU, see ``training/run.sh``)::

    torchrun --nproc_per_node 2 -m training.finetune --data-path DATA --sam-weights ... --sync_bn

``--data-path`` takes a research ``DATA`` folder (``{train,val,test}/mask`` + ``label``) or an
exported correction set (``manifest.json``), several times to combine them. The run writes
``best.pt`` (highest validation Dice), ``last.pt`` (with the state ``--resume`` needs),
``metrics.jsonl`` and ``train.log`` into ``--output-dir``. ``--test-only`` evaluates a checkpoint
on the test split instead.

The research code's launch lines work as they are: its short options (``-b``, ``-j``),
``--start_epoch`` and boolean values (``--amp True``, ``--sync_bn False``, ``--save-best True``).

``--tune`` chooses what trains: ``mona`` the Mona adapters and the head (the paper's method, the
default on the official SAM encoder), ``full`` the whole network (the default where the encoder
has no pretrained weights; encoder blocks are recomputed in backward), ``head`` the head alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from napari_samlung.errors import SamLungError, flag_name, user_error
from napari_samlung.data import (
    AugmentConfig,
    DataError,
    EpochKeys,
    SegmentationDataset,
    check_pairs,
    discover_training_data,
)
from napari_samlung.files import write_atomic
from napari_samlung.evaluation import Postprocess, evaluate_pairs, summary_line, write_results
from napari_samlung.inference.predictor import TilePredictor
from napari_samlung.model import SamLung
from napari_samlung.model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from napari_samlung.model.config import PRESETS
from napari_samlung.training_runs.contract import (
    TUNE_MODES,
    DoneEvent,
    EpochEvent,
    ErrorEvent,
    EvaluationEvent,
    RunFolder,
    StartEvent,
)
from training.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
)
from training.engine import DIVERGED_HINT, DivergedError, EpochProgress, train_one_epoch, validate
from training.losses import SegmentationLoss
from training.progress import MetricsLog, setup_logging
from training.schedule import poly_schedule
from training.state import capture_rng, restore_rng, seed_everything

PROG = "samlung-finetune"
SIZE_MULTIPLE = 16
RESUME_KIND = "samlung-finetune-state"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


class UsageError(SamLungError):
    """Options that do not fit together or do not fit the data."""


class _Parser(argparse.ArgumentParser):
    """Usage mistakes print one line (``samlung-finetune: error: ...``) and exit 2."""

    def error(self, message: str) -> None:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def truth_value(text: str) -> bool:
    """A boolean option's value: true/false, yes/no, on/off or 1/0, in any case."""
    word = text.strip().lower()
    if word in TRUE_WORDS + FALSE_WORDS:
        return word in TRUE_WORDS
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def positive_float(text: str) -> float:
    """A finite number above zero (``nan`` and ``inf`` are refused)."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number, zero or more (``nan`` and ``inf`` are refused)."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def device_name(text: str) -> str:
    """cpu, cuda or cuda:N; auto takes CUDA when present. Anything else is a usage error."""
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(text).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def add_flag(group: argparse._ArgumentGroup, *names: str, help: str, default: bool = False, **kwargs) -> None:
    """A boolean option: the bare flag means true, and the research code's spelling with a value
    (``--amp True``, ``--sync_bn False``) works too."""
    group.add_argument(*names, nargs="?", const=True, default=default, type=truth_value, metavar="BOOL",
                       help=help, **kwargs)


def get_args_parser() -> argparse.ArgumentParser:
    """Every option of the program (the research code's, plus what makes it usable)."""
    parser = _Parser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data-path", action="append", required=True, metavar="PATH",
                      help="research DATA folder or exported training set; repeat to combine several")
    data.add_argument("--num-classes", type=int, default=None,
                      help="foreground classes (default: from the manifests, else 1)")
    data.add_argument("--crop-size", type=int, default=None,
                      help="train on random square crops of this side (multiple of 16); "
                           "images may then differ in size")
    data.add_argument("--val-fraction", type=fraction, default=0.2,
                      help="share of training pairs held out when there is no validation data")
    data.add_argument("--mpp", type=positive_float, default=None,
                      help="microns per pixel of the data (default: from the manifests when they agree)")
    data.add_argument("-j", "--workers", type=int, default=4, help="DataLoader worker processes per rank")

    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=tuple(PRESETS), default="vit_b",
                       help="model to build from scratch")
    model.add_argument("--sam-weights", default=None, help="official SAM ViT-B file (sam_vit_b_01ec64.pth)")
    model.add_argument("--init-checkpoint", default=None,
                       help="start from this SAM-Lung checkpoint with a fresh optimizer "
                            "(fine-tune on corrections)")
    model.add_argument("--resume", default=None, help="continue the run that wrote this last.pt")
    model.add_argument("--tune", choices=TUNE_MODES, default=None,
                       help="what trains: mona = Mona adapters + head (the paper's method), full = the whole "
                            "network, head = the head alone (default: mona on the official SAM encoder, full on "
                            "an encoder without pretrained weights; --resume: the run's own)")

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--device", type=device_name, default="auto",
                       help="auto (CUDA when present), cuda, cuda:N or cpu "
                            "(under torchrun each process takes cuda:LOCAL_RANK)")
    optim.add_argument("-b", "--batch-size", type=int, default=4, help="images per step per process")
    optim.add_argument("--epochs", type=int, default=50)
    optim.add_argument("--start_epoch", "--start-epoch", dest="start_epoch", type=int, default=0,
                       help="epochs already done: a new run starts after them, on the learning-rate "
                            "curve where they left it (--resume takes its own)")
    optim.add_argument("--max-steps-per-epoch", type=int, default=None,
                       help="cap on optimizer steps per epoch (short runs)")
    optim.add_argument("--lr", type=positive_float, default=0.01,
                       help="base learning rate (poly schedule, 1 warm-up epoch)")
    optim.add_argument("--encoder-lr-scale", type=positive_float, default=0.1,
                       help="with --tune full: the encoder's learning rate as a share of --lr (the adapters "
                            "and the head take --lr)")
    optim.add_argument("--momentum", type=non_negative_float, default=0.9)
    optim.add_argument("--weight-decay", "--wd", type=non_negative_float, default=1e-4)
    add_flag(optim, "--amp", help="mixed precision (autocast)")
    optim.add_argument("--amp-dtype", choices=("bfloat16", "float16"), default="bfloat16",
                       help="autocast dtype with --amp (float16 adds a gradient scaler)")
    add_flag(optim, "--checkpointing", help="recompute encoder blocks in backward (less memory)")
    add_flag(optim, "--compile", help="torch.compile the encoder blocks")
    optim.add_argument("--seed", type=int, default=0)

    distributed = parser.add_argument_group("distributed (start with torchrun)")
    add_flag(distributed, "--distributed",
             help="join a process group even with one process (automatic when torchrun starts several)")
    add_flag(distributed, "--sync_bn", "--sync-bn", dest="sync_bn", help="SyncBatchNorm across processes (CUDA)")
    distributed.add_argument("--world-size", type=int, default=None,
                             help="number of processes (checked against torchrun's)")
    distributed.add_argument("--dist-url", default="env://", help="process group rendezvous")
    distributed.add_argument("--dist-timeout", type=positive_float, default=60.0, metavar="SECONDS",
                             help="give up when the processes have not all met at --dist-url by then")

    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", default="output", help="checkpoints, metrics.jsonl, train.log")
    add_flag(output, "--save-best", default=True,
             help="keep best.pt, the checkpoint with the highest validation Dice")
    output.add_argument("--no-save-best", dest="save_best", action="store_false", help="no best.pt")
    output.add_argument("--print-freq", type=int, default=10, help="log every N steps")
    add_flag(output, "--rank-digests",
             help="debugging DDP: each rank writes a SHA-256 of its trainable weights at the end")

    test = parser.add_argument_group("evaluation")
    add_flag(test, "--test-only",
             help="evaluate --resume/--init-checkpoint (else OUTPUT_DIR/best.pt) on the test split")
    add_flag(test, "--save-masks", help="with --test-only: write the predicted masks")
    add_flag(test, "--no-postprocess", help="with --test-only: no morphological open/close")
    test.add_argument("--kernel-size", type=int, default=15, help="with --test-only: open/close kernel side")
    test.add_argument("--iterations", type=int, default=5, help="with --test-only: open/close repetitions")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point: 0 on success, 2 with a one-line message on bad input, 130 with one
    line on Ctrl-C (the checkpoints already written stay as they are: they appear atomically)."""
    args = get_args_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        last = RunFolder(Path(args.output_dir)).last
        if args.test_only:
            kept = ""
        else:
            kept = f"; continue with --resume {last}" if last.is_file() else "; no epoch had finished, nothing saved"
        print(f"{PROG}: interrupted{kept}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        error = user_error(exc)
        if error is None:
            raise
        print(f"{PROG}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        cleanup()


def check_args(args: argparse.Namespace) -> None:
    """Refuse values that cannot work before any data or model is touched."""
    for name in ("batch_size", "epochs", "print_freq"):
        if getattr(args, name) < 1:
            raise UsageError(f"{flag_name(name)} must be >= 1, got {getattr(args, name)}")
    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    if args.max_steps_per_epoch is not None and args.max_steps_per_epoch < 1:
        raise UsageError(f"--max-steps-per-epoch must be >= 1, got {args.max_steps_per_epoch}")
    if args.crop_size is not None and (args.crop_size < SIZE_MULTIPLE or args.crop_size % SIZE_MULTIPLE):
        raise UsageError(f"--crop-size must be a positive multiple of {SIZE_MULTIPLE}, got {args.crop_size}")
    if not 0 <= args.start_epoch < args.epochs:
        raise UsageError(f"--start_epoch must be >= 0 and below --epochs {args.epochs}, got {args.start_epoch}")
    if args.resume and args.init_checkpoint:
        raise UsageError("--resume and --init-checkpoint exclude each other (resume continues a run; "
                         "init-checkpoint starts a new one from a model)")


def prepare_output_dir(root: Path) -> None:
    """Create ``root`` (``--output-dir``) if needed; refuse a file or a folder that cannot be written."""
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root}: {{opt:output_dir}} is a file, not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{root}: cannot create the {{opt:output_dir}} folder ({exc.strerror or exc})") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise UsageError(f"{root}: {{opt:output_dir}} is not writable")


def weights_are_finite(model: SamLung) -> bool:
    """Whether every trainable tensor is finite on every rank (a collective: all ranks call it)."""
    tensors = [*model.trainable_parameters(),
               *(t for t in model.trainable_state_dict().values() if t.is_floating_point())]
    bad = torch.stack([~torch.isfinite(t).all() for t in tensors]).sum().to(torch.float64).reshape(1)
    return all_reduce_sum(bad).item() == 0


def build_model(args: argparse.Namespace, num_classes: int, tile_size: int | None, logger) -> SamLung:
    """The model to train: from --resume, --init-checkpoint, or --preset (+ --sam-weights)."""
    source = args.resume or args.init_checkpoint
    if source:
        model = load_checkpoint(source, sam_weights=args.sam_weights)
        logger.info(f"model: {model.config.preset} from {source}")
        if model.config.num_classes != num_classes:
            raise UsageError(f"{source}: the model has {model.config.num_classes} foreground class(es), "
                             f"the data {num_classes}")
        return model
    preset = PRESETS[args.preset]
    overrides = {}
    if args.sam_weights is None and tile_size is not None:
        overrides["img_size"] = tile_size  # a random encoder takes the training tile size as its own
    model = SamLung(preset(num_classes=num_classes, **overrides))
    if args.sam_weights:
        report = model.load_sam_weights(args.sam_weights)
        logger.info(f"model: {args.preset}, {report.loaded} SAM encoder tensors from {args.sam_weights}")
    else:
        logger.warning(f"model: {args.preset} with a random encoder (no --sam-weights); "
                       "its checkpoints include the encoder")
    return model


def choose_tune(args: argparse.Namespace, model: SamLung, logger) -> str:
    """The ``--tune`` mode of this run; the log says why when it is the default.

    A resumed run keeps the mode it was trained with (another one is a usage error); a new run
    takes ``--tune`` or the model's default (:attr:`SamLungConfig.default_tune`).
    """
    config = model.config
    if args.resume:
        trained = config.tune or "mona"  # checkpoints from before --tune trained the adapters and head
        if args.tune not in (None, trained):
            raise UsageError(f"{args.resume}: the run was trained with --tune {trained} and resumes only with it "
                             f"(to switch, start a new run from it: --init-checkpoint {args.resume} "
                             f"--tune {args.tune})")
        if args.tune is None:
            logger.info(f"--tune {trained}: the mode of the run being resumed")
        return trained
    if args.tune is not None:
        if args.tune != "full" and config.encoder_weights == "random":
            logger.warning(f"--tune {args.tune} on an encoder without pretrained weights: it stays random "
                           "(--tune full trains it too)")
        return args.tune
    reasons = {"random": "the encoder has no pretrained weights (no --sam-weights), so the whole network trains",
               "sam": "Mona adapters and head on the official SAM encoder",
               "trained": "the encoder was trained as a whole before, so it goes on training"}
    mode = config.default_tune
    logger.info(f"--tune {mode} by default: {reasons[config.encoder_weights]}")
    return mode


def parameter_groups(model: SamLung, lr: float, encoder_lr_scale: float) -> list[dict]:
    """The optimizer's groups: the encoder's own weights (trained under --tune full only) at
    ``lr * encoder_lr_scale``, so that a few steps on a few tiles do not wreck its features; the
    adapters and the head at ``lr``."""
    parts = {id(p) for _, module in model.trainable_modules() for p in module.parameters()}
    trainable = model.trainable_parameters()
    encoder = [p for p in trainable if id(p) not in parts]
    groups = [{"params": [p for p in trainable if id(p) in parts], "lr": lr}]
    return groups + ([{"params": encoder, "lr": lr * encoder_lr_scale}] if encoder else [])


def weights_digest(model: SamLung) -> str:
    """SHA-256 over the trainable parameters, by name: equal on every DDP rank if in sync."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_only(args: argparse.Namespace, dist: DistInfo, folder: RunFolder, logger, metrics: MetricsLog) -> int:
    """Evaluate a checkpoint on the test split (else the validation split), on rank 0."""
    checkpoint = Path(args.resume or args.init_checkpoint or folder.best)
    postprocess = Postprocess(not args.no_postprocess, args.kernel_size, args.iterations)
    model = load_checkpoint(checkpoint, sam_weights=args.sam_weights)
    data = discover_training_data(args.data_path, model.config.num_classes, require_train=False)
    pairs, split = (data.test, "test") if data.test else (data.val, "val")
    if not pairs:
        raise DataError("no test or val pairs in " + ", ".join(args.data_path))
    if dist.is_main:
        test_dir = folder.root / "test"
        masks_dir = test_dir / "masks" if args.save_masks else None
        (masks_dir or test_dir).mkdir(parents=True, exist_ok=True)
        predictor = TilePredictor(model, model.config, dist.device, amp=args.amp)
        logger.info(f"evaluating {checkpoint} on {len(pairs)} {split} images")
        results = list(evaluate_pairs(predictor, pairs, batch_size=args.batch_size, postprocess=postprocess,
                                      masks_dir=masks_dir, workers=max(args.workers, 1)))
        summary = write_results(test_dir, results)
        logger.info(summary_line(summary))
        logger.info(f"per-image metrics: {test_dir / 'metrics.tsv'}")
        metrics.write(EvaluationEvent(str(checkpoint), split, summary))
    barrier()
    return 0


def run(args: argparse.Namespace) -> int:
    check_args(args)
    folder = RunFolder(Path(args.output_dir))
    prepare_output_dir(folder.root)
    dist = init_distributed(args.device, args.distributed, args.dist_url, args.world_size, args.dist_timeout)
    logger = setup_logging(dist.is_main, folder.root)
    metrics = MetricsLog(folder.metrics if dist.is_main else None)
    try:
        seed_everything(args.seed)
        if args.test_only:
            return test_only(args, dist, folder, logger, metrics)
        return train(args, dist, folder, logger, metrics)
    except Exception as exc:
        error = user_error(exc)
        if error is not None:
            metrics.write(ErrorEvent(" ".join(str(error).split())))
        raise
    except KeyboardInterrupt:
        metrics.write(ErrorEvent("interrupted"))
        raise
    finally:
        metrics.close()


def train(args: argparse.Namespace, dist: DistInfo, folder: RunFolder, logger, metrics: MetricsLog) -> int:
    device = dist.device

    # ---- data
    data = discover_training_data(args.data_path, args.num_classes, args.val_fraction)
    for note in data.notes:
        logger.info(note)
    started = time.perf_counter()
    sizes = check_pairs(data.train + data.val, data.num_classes, workers=max(args.workers, 1))
    train_sizes, val_sizes = set(sizes[: len(data.train)]), set(sizes[len(data.train):])
    logger.info(f"data: {len(data.train)} training and {len(data.val)} validation pairs, "
                f"{data.num_classes} foreground class(es), checked in {time.perf_counter() - started:.1f} s")
    if args.crop_size is None and args.batch_size > 1 and len(train_sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for h, w in sorted(train_sizes)[:4])
        raise UsageError(f"training images differ in size ({shown}...): pass --crop-size N or --batch-size 1")
    tile_size = args.crop_size
    if tile_size is None and len(train_sizes) == 1:
        height, width = next(iter(train_sizes))
        tile_size = height if height == width and height % SIZE_MULTIPLE == 0 else None

    # ---- model
    model = build_model(args, data.num_classes, tile_size, logger)
    mpp = args.mpp if args.mpp is not None else data.mpp
    if mpp is not None:
        model.config = dataclasses.replace(model.config, mpp=mpp)
    model.set_tune(choose_tune(args, model, logger))
    include_encoder = args.sam_weights is None  # then the checkpoints must carry the encoder
    seed_everything(args.seed + dist.rank)  # same initial weights everywhere, different dropout per rank
    model.to(device)
    if args.checkpointing or model.config.tune == "full":  # the whole encoder's activations: recomputed
        model.set_block_checkpointing(True)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    if args.sync_bn and dist.enabled and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif args.sync_bn:
        logger.info("--sync_bn: " + ("SyncBatchNorm needs CUDA; keeping BatchNorm" if dist.enabled
                                     else "single process; plain BatchNorm is the same"))
    if args.compile:
        model.compile_blocks()
    optimizer = torch.optim.SGD(parameter_groups(model, args.lr, args.encoder_lr_scale), lr=args.lr,
                                momentum=args.momentum, weight_decay=args.weight_decay)
    ddp_model = model
    if dist.enabled:
        # DDP warns when a gradient's strides differ from its bucket's; ours differ only along
        # size-1 dimensions (1x1 and depthwise kernels), where the layouts are the same.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        device_ids = [dist.local_rank] if device.type == "cuda" else None
        ddp_model = DistributedDataParallel(model, device_ids=device_ids)
    trainable = sum(p.numel() for p in model.trainable_parameters())
    total = sum(p.numel() for p in model.parameters())
    if model.config.tune == "full":
        logger.info(f"--tune full: the encoder at {args.encoder_lr_scale:g} of --lr, its blocks recomputed in backward")
    logger.info(f"trainable parameters (--tune {model.config.tune}): {trainable / 1e6:.2f} M of {total / 1e6:.2f} M; "
                f"{dist.world_size} process(es) on {device.type}")

    # ---- loaders
    loader_options = dict(num_workers=args.workers, pin_memory=device.type == "cuda",
                          persistent_workers=args.workers > 0)
    train_set = SegmentationDataset(data.train, data.num_classes, args.crop_size, AugmentConfig(), args.seed,
                                    pad_multiple=SIZE_MULTIPLE)
    train_sampler = EpochKeys(DistributedSampler(train_set, num_replicas=dist.world_size, rank=dist.rank,
                                                 shuffle=True, seed=args.seed))
    # Own generators: creating loader iterators must not draw from the global RNG (resume is exact).
    train_loader = DataLoader(train_set, args.batch_size, sampler=train_sampler,
                              generator=torch.Generator().manual_seed(args.seed), **loader_options)
    val_set = SegmentationDataset(data.val, data.num_classes)
    val_loader = DataLoader(val_set, args.batch_size if len(val_sizes) == 1 else 1,
                            sampler=list(range(dist.rank, len(val_set), dist.world_size)),
                            generator=torch.Generator().manual_seed(args.seed), **loader_options)
    steps = min(len(train_loader), args.max_steps_per_epoch or len(train_loader))

    # ---- loss, schedule, mixed precision
    criterion = SegmentationLoss(data.num_classes).to(device)
    scheduler = poly_schedule(optimizer, total_steps=args.epochs * steps, warmup_steps=steps,
                              start_step=args.start_epoch * steps)
    amp_dtype = getattr(torch, args.amp_dtype) if args.amp else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    # ---- resume
    start_epoch, global_step, best_dice = args.start_epoch, args.start_epoch * steps, -1.0
    if args.resume:
        state = read_checkpoint(args.resume).get("extra", {})
        if state.get("kind") != RESUME_KIND:
            raise UsageError(f"{args.resume}: holds no training state to resume "
                             "(a best.pt or exported model? start from it with --init-checkpoint)")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        scaler.load_state_dict(state["scaler"])
        if args.start_epoch not in (0, state["epoch"]):
            logger.warning(f"--start_epoch {args.start_epoch} ignored: --resume continues after epoch {state['epoch']}")
        start_epoch, global_step, best_dice = state["epoch"], state["global_step"], state["best_dice"]
        if state["steps_per_epoch"] != steps:
            logger.warning(f"--resume: {steps} steps per epoch now, {state['steps_per_epoch']} before; "
                           "the learning-rate curve shifts")
        if len(state["rng"]) == dist.world_size:
            restore_rng(state["rng"][dist.rank], device)
        else:
            logger.warning(f"--resume: saved by {len(state['rng'])} process(es), now {dist.world_size}; "
                           "random streams start anew")
            seed_everything(args.seed + dist.rank + 1000 * start_epoch)
        logger.info(f"resuming {args.resume} after epoch {start_epoch} (best Dice so far {best_dice:.4f})")

    # ---- the epoch loop
    best_path, last_path = folder.best, folder.last
    metrics.write(StartEvent(epochs=args.epochs, start_epoch=start_epoch + 1, steps=steps,
                             train_images=len(data.train), val_images=len(data.val), world_size=dist.world_size,
                             batch_size=args.batch_size, resumed=bool(args.resume)))
    for epoch in range(start_epoch, args.epochs):
        epoch_start = time.perf_counter()
        train_sampler.set_epoch(epoch)
        progress = EpochProgress(epoch, args.epochs, steps, global_step, args.print_freq)
        train_stats = train_one_epoch(ddp_model, model.config, criterion, optimizer, scheduler, scaler,
                                      train_loader, device, amp_dtype, progress, logger, metrics)
        global_step += steps
        if not weights_are_finite(model):  # never save them, never go on from them
            raise DivergedError(f"epoch {epoch + 1}: the weights are no longer finite after its last step; "
                                f"{DIVERGED_HINT}")
        val_stats = validate(model, val_loader, device, amp=args.amp)
        is_best = val_stats["val_dice"] > best_dice
        best_dice = max(best_dice, val_stats["val_dice"])
        rng_states = all_gather_object(capture_rng(device))  # every rank's, for an exact resume
        if dist.is_main:
            summary = {"epoch": epoch + 1, "val_dice": val_stats["val_dice"], "train_tile_size": tile_size}
            if is_best and args.save_best:
                save_checkpoint(model, best_path, include_encoder, extra=summary)
            save_checkpoint(model, last_path, include_encoder, extra={
                **summary, "kind": RESUME_KIND, "epochs": args.epochs, "global_step": global_step,
                "steps_per_epoch": steps, "best_dice": best_dice, "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_states,
                "args": dict(vars(args)),
            })
        lr = optimizer.param_groups[0]["lr"]
        logger.info(f"epoch {epoch + 1}/{args.epochs} done: loss {train_stats['loss']:.4f}  lr {lr:.3g}  "
                    f"val Dice {val_stats['val_dice']:.4f}{' (best)' if is_best else ''}  "
                    f"{train_stats['images_per_s']:.1f} img/s  {time.perf_counter() - epoch_start:.1f} s")
        metrics.write(EpochEvent(epoch=epoch + 1, epochs=args.epochs, loss=train_stats["loss"], lr=lr,
                                 val_dice=val_stats["val_dice"], val_images=val_stats["val_images"],
                                 best_dice=best_dice, is_best=is_best, images_per_s=train_stats["images_per_s"],
                                 time_s=time.perf_counter() - epoch_start))
    barrier()
    if start_epoch >= args.epochs:
        logger.info(f"nothing to do: the run already finished its {args.epochs} epochs")
    if args.rank_digests:
        write_atomic(folder.digest(dist.rank), (weights_digest(model) + "\n").encode())
    best = str(best_path) if args.save_best and best_path.is_file() else None
    metrics.write(DoneEvent(best=best, last=str(last_path) if last_path.is_file() else None))
    logger.info(f"done: best {best} (val Dice {best_dice:.4f}), last {last_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
