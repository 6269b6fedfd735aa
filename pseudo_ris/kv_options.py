"""``key=value`` command-line options for the benchmark tools (no Hydra: they take a handful of plain options)."""

from __future__ import annotations

import sys


def parse_key_values(argv: list[str], defaults: dict[str, str], doc: str | None) -> dict[str, str]:
    """``defaults`` updated from ``key=value`` arguments; ``--help`` prints ``doc`` and exits 0; an unknown option
    prints one line naming it and exits 2."""
    if any(a in ("-h", "--help") for a in argv):
        print(doc or "")
        raise SystemExit(0)
    opts = dict(defaults)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in opts:
            print(f"error: unknown option {arg!r}; options: {', '.join(f'{k}=' for k in opts)}", file=sys.stderr)
            raise SystemExit(2)
        opts[key] = value
    return opts


def bench_device(opts: dict[str, str]):
    """``threads=`` (0 = torch's default) and ``device=`` of a benchmark: the torch device, or exit 2 when a GPU is
    asked for and none is visible."""
    import torch

    if int(opts["threads"]):
        torch.set_num_threads(int(opts["threads"]))
    device = torch.device(opts["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: device=cuda but no GPU is visible", file=sys.stderr)
        raise SystemExit(2)
    return device
