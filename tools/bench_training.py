"""Time of one training step on 2 cores, in float32 and in mixed precision (bf16-mixed).

    python tools/prepare_data.py      # once
    python tools/bench_training.py [--steps 10] [--no-write]

Builds each model of the side-by-side (configs/cpu.yaml's parttok, and the residual VQ of
configs/rvq.yaml on top of it, resolved as LightningCLI resolves them) with the
``TokenizerModule`` settings and losses ``parttok train`` uses, draws one batch of cpu.yaml's
training windows (real clips from data/, augmented as in training), and times the optimiser step
(forward, losses, backward, AdamW) with torch limited to 2 threads: plain float32, then under
bfloat16 autocast as Lightning's ``--trainer.precision bf16-mixed`` runs it. Each model and
precision in its own fresh process (no cache or allocator state carried over); the fastest of
``--steps`` steps after two warm-up steps. Mixed precision pays off only on a CPU with bfloat16
instructions (the table says whether this one has them); without, it can be slower. Writes the
"## Training step" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/release.py
SECTION = "## Training step"
THREADS = 2
CONFIGS = {  # arguments on top of configs/cpu.yaml
    "parttok, 6 parts x 512 (configs/cpu.yaml)": (),
    "MoMask residual VQ, 6 x 512 (configs/rvq.yaml)": ("--config", "configs/rvq.yaml"),
}


def time_steps(arguments: tuple[str, ...], mixed: bool, steps: int, data: Path) -> dict:
    """Seconds of the fastest of ``steps`` training steps (after 2 warm-ups) of the model
    configs/cpu.yaml with ``arguments`` trains (as LightningCLI resolves them), in float32 or
    under bfloat16 autocast (``mixed``)."""
    import torch
    from release import resolved_config

    from parttok.data import MotionDataModule
    from parttok.tokenizer import build_model
    from parttok.training import TokenizerModule

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    config = resolved_config(arguments)
    data_args = dict(config["data"])
    data_args["data_dirs"] = [str(data / Path(folder).name) for folder in data_args["data_dirs"]]
    datamodule = MotionDataModule(**data_args)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    module_args = dict(config["model"])
    spec = module_args.pop("model")
    model = build_model(spec["class_path"].rsplit(".", 1)[-1], spec.get("init_args", {}))
    module = TokenizerModule(model, **module_args)  # the losses and weights training uses
    module.mean.copy_(torch.as_tensor(datamodule.mean))
    module.std.copy_(torch.as_tensor(datamodule.std))
    module.log = lambda *args, **kwargs: None  # no trainer to log to
    optimizer = torch.optim.AdamW(model.parameters(), lr=module.hparams.lr)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    times = []
    for index in range(steps + 2):
        start = time.perf_counter()
        step()
        if index >= 2:
            times.append(time.perf_counter() - start)
    frames = int(batch["mask"].sum())
    parameters = sum(p.numel() for p in model.parameters())
    return {"seconds": min(times), "frames": frames, "parameters": parameters}


def in_fresh_process(function, *args) -> dict:
    """``function(*args)`` in a new process (spawned: no state shared with this one)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def main() -> int:
    from parttok.io import bfloat16_instructions, machine_description, replace_markdown_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--data", type=Path, default=REPO / "data", help="converted data")
    parser.add_argument("--benchmarks", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if not (args.data / "bandai").is_dir():
        raise SystemExit(f"{args.data}/bandai is missing: run python tools/prepare_data.py")
    rows = []
    for label, arguments in CONFIGS.items():
        full, mixed = (
            in_fresh_process(time_steps, arguments, precision, args.steps, args.data)
            for precision in (False, True)
        )
        rows.append(
            f"| {label} | {full['parameters'] / 1e6:.2f} M | {full['frames']} | "
            f"{full['seconds'] * 1000:.0f} ms | {mixed['seconds'] * 1000:.0f} ms | "
            f"{full['seconds'] / mixed['seconds']:.2f}x |"
        )
        print(rows[-1], flush=True)
    flags = ", ".join(bfloat16_instructions() or ["none"])
    section = "\n".join(
        [
            SECTION,
            "",
            f"Command: `python tools/bench_training.py --steps {args.steps}` (after `python "
            f"tools/prepare_data.py`). {machine_description()}, no GPU, {THREADS} threads; "
            f"bfloat16 instructions: {flags}; {datetime.date.today().isoformat()}. "
            "One optimiser step (forward, losses, backward, AdamW) on one batch of "
            "configs/cpu.yaml's training windows, each model and precision in a fresh process, "
            f"the fastest of {args.steps} steps. Mixed precision is Lightning's "
            "`--trainer.precision bf16-mixed`: matrix products in bfloat16, the codebooks, "
            "their EMA updates and the losses in float32.",
            "",
            "| model | parameters | real frames in the batch | float32 | bf16-mixed | faster |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    print(section)
    if not args.no_write:
        replace_markdown_section(args.benchmarks, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
