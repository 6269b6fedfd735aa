"""Benchmark: training throughput of the real-size RIS models (forward + backward + AdamW step), random init.

    python tools/bench_train.py model=lavt_swin_b            # Swin-B + BERT-base at 480 px, batch 2
    python tools/bench_train.py model=cris_r50               # CLIP RN50 CRIS at 416 px, batch 2
    python tools/bench_train.py model=lavt_swin_b device=cuda precision=bf16 batch=8 channels_last=true

Nothing is downloaded: BERT-base is built from its configuration with random weights (LAVT) and the CLIP RN50
towers are random (CRIS). Times the steps after ``warmup`` untimed ones and prints samples/s and the peak memory:
on CPU the process's peak resident memory (``ru_maxrss``, which includes the interpreter and libraries), on a
GPU ``torch.cuda.max_memory_allocated``. ``precision``: fp32 | bf16 | fp16 (autocast; fp16 with a gradient
scaler, like Lightning's ``16-mixed``); ``channels_last`` converts the model and the images (helps convolutional
CRIS on GPUs). Per-GPU batch of the papers' recipes: LAVT 8 (32 on 4 GPUs), CRIS 8 (64 on 8 GPUs).
Options: ``model=``, ``device=cpu|cuda``, ``batch=2``, ``size=`` (default the model's input size: 480 / 416),
``steps=3``, ``warmup=1``, ``threads=1`` (0 = torch default), ``precision=fp32``, ``channels_last=false``,
``clock=cpu|wall``: ``cpu`` (default) times this process's CPU seconds, which on a shared machine stay steady
while wall time swings with other users' load (with ``threads=1`` the two agree on an idle machine); use
``clock=wall`` on a GPU.
Each step prints its CPU and wall seconds; the warm-up steps are printed too but not counted. On CPU the resident
memory after building the model and the optimizer is printed next to the peak, so the step's own share (activations,
gradients, AdamW state) reads as their difference.
The closing line: ``<model> <size>px batch <b> <device> <precision>: <x> samples/s (<s> s/step), peak memory <n> MB``.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time

from pseudo_ris.kv_options import bench_device, parse_key_values

OPTIONS = {"model": "lavt_swin_b", "device": "cpu", "batch": "2", "size": "", "steps": "3", "warmup": "1",
           "threads": "1", "precision": "fp32", "channels_last": "false", "clock": "cpu"}
SENTENCES = ["the man on the left in a red shirt", "a small white dog next to the bench", "the second car",
             "woman holding an umbrella", "the largest elephant", "blue chair near the window", "the pizza slice",
             "a boy with a bat"]


def _parse(argv: list[str]) -> dict[str, str]:
    opts = parse_key_values(argv, OPTIONS, __doc__)
    if opts["model"] not in ("lavt_swin_b", "cris_r50", "cris_r101", "lavt_tiny", "cris_tiny"):
        print(f"error: model={opts['model']} is not a preset (lavt_swin_b | cris_r50 | cris_r101 | lavt_tiny | "
              "cris_tiny)", file=sys.stderr)
        raise SystemExit(2)
    if opts["clock"] not in ("cpu", "wall"):
        print(f"error: clock={opts['clock']}: choose cpu or wall", file=sys.stderr)
        raise SystemExit(2)
    if opts["precision"] not in ("fp32", "bf16", "fp16"):
        print(f"error: precision={opts['precision']}: choose fp32, bf16 or fp16", file=sys.stderr)
        raise SystemExit(2)
    numeric = [("batch", 1), ("steps", 1), ("warmup", 0), ("threads", 0)] + ([("size", 32)] if opts["size"] else [])
    for key, low in numeric:
        if not opts[key].isdigit() or int(opts[key]) < low:
            print(f"error: {key}={opts[key]}: expected an integer >= {low}", file=sys.stderr)
            raise SystemExit(2)
    return opts


def _rss_mb() -> float:
    """Current resident memory of this process in MB (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return 0.0


def main() -> None:
    opts = _parse(sys.argv[1:])
    import torch

    from ris_models.registry import build_model

    device = bench_device(opts)
    torch.manual_seed(0)
    name = opts["model"]
    kwargs = {"bert_path": None, "vocab_file": "synthref_wordpiece.txt"} if name == "lavt_swin_b" else {}
    t0 = time.perf_counter()
    model = build_model(name, **kwargs).to(device).train()
    build_s = time.perf_counter() - t0
    size = int(opts["size"] or model.input_size)
    batch, steps, warmup = int(opts["batch"]), int(opts["steps"]), int(opts["warmup"])
    channels_last = opts["channels_last"] == "true"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[opts["precision"]]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=gen).to(device)
    if channels_last:
        images = images.to(memory_format=torch.channels_last)
    target = (torch.rand(batch, size, size, generator=gen) > 0.7).float().to(device)
    tok = {k: v.to(device) for k, v in model.tokenize([SENTENCES[i % len(SENTENCES)] for i in range(batch)]).items()}
    print(f"{name}: {n_params / 1e6:.1f} M parameters (random init, built in {build_s:.1f} s), input {size}px, "
          f"batch {batch}, {device}, {opts['precision']}{', channels_last' if channels_last else ''}, "
          f"torch threads {torch.get_num_threads()}, {opts['clock']} clock", flush=True)
    base_rss = _rss_mb()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model.loss(model(images, **tok), target)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return float(loss.detach())

    def timed() -> tuple[float, float, float]:
        """(CPU s, wall s, loss) of one step."""
        cpu, wall = time.process_time(), time.perf_counter()
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.process_time() - cpu, time.perf_counter() - wall, loss

    for i in range(warmup):
        cpu, wall, loss = timed()
        print(f"  warm-up {i + 1}: {cpu:.2f} CPU s, {wall:.2f} wall s, loss {loss:.4f} (not counted)", flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps):
        cpu, wall, loss = timed()
        times.append(cpu if opts["clock"] == "cpu" else wall)
        print(f"  step {i + 1}: {cpu:.2f} CPU s, {wall:.2f} wall s, loss {loss:.4f}", flush=True)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        what = "peak GPU memory"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        what = "peak RSS"
    per_step = statistics.median(times)
    extra = f"; {base_rss:.0f} MB before the first step: libraries + weights" if device.type == "cpu" else ""
    print(f"median of {steps} timed steps: {per_step:.2f} {opts['clock']} s ({what} {peak:.0f} MB{extra})")
    print(f"{name} {size}px batch {batch} {device.type} {opts['precision']}: {batch / per_step:.3f} samples/s "
          f"({per_step:.2f} s/step), peak memory {peak:.0f} MB")


if __name__ == "__main__":
    main()
