"""What the batch commands share: per-item error reporting, a progress bar, parallelism."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

from parttok.errors import InputError

Item = TypeVar("Item")
Result = TypeVar("Result")


def _single_thread() -> None:
    """Pool workers run one torch thread each (forked OpenMP pools hang, and the work is
    already parallel across processes) and, on Linux, die with their parent, so a killed
    run leaves no orphans."""
    import torch

    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _guarded(worker: Callable[[Item], Result], item: Item) -> tuple[Result | None, str | None]:
    try:
        return worker(item), None
    except InputError as error:
        return None, str(error)


def process_batch(
    items: Iterable[Item],
    worker: Callable[[Item], Result],
    description: str,
    jobs: int = 1,
    show_progress: bool = True,
) -> tuple[list[tuple[Item, Result]], list[tuple[Item, str]]]:
    """Run ``worker`` on every item; one bad item is reported on stderr and the rest go on.

    ``worker`` must be picklable when ``jobs > 1``. Returns (done, failed) pairs.
    """
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    items = list(items)
    done: list[tuple[Item, Result]] = []
    failed: list[tuple[Item, str]] = []
    # the bar is closed (its line ended) before an error that stops the run is printed
    with tqdm(total=len(items), desc=description, unit="clip", disable=not show_progress) as bar:
        if jobs > 1 and len(items) > 1:
            with ProcessPoolExecutor(max_workers=jobs, initializer=_single_thread) as pool:
                outcomes = pool.map(_guarded, [worker] * len(items), items, chunksize=4)
                for item, (result, error) in zip(items, outcomes, strict=True):
                    _record(item, result, error, done, failed, bar)
        else:
            for item in items:
                _record(item, *_guarded(worker, item), done, failed, bar)
    return done, failed


def _record(item, result, error, done, failed, bar) -> None:
    if error is None:
        done.append((item, result))
    else:
        failed.append((item, error))
        bar.write(f"skipped: {error}", file=sys.stderr)
    bar.update(1)


def exit_status(failed: list) -> int:
    """0 when every item succeeded, 2 when any input was bad."""
    if failed:
        print(f"{len(failed)} input(s) failed; see the messages above", file=sys.stderr)
        return 2
    return 0


def add_refine_argument(parser: argparse.ArgumentParser) -> None:
    """--refine, for every command that encodes."""
    parser.add_argument(
        "--refine",
        type=refine_count,
        default=0,
        metavar="N",
        help="try each step's N nearest codes per part through the decoder and keep the best "
        "(0: the nearest codes; 8 reconstructs better, encoding far slower: BENCHMARKS.md)",
    )


def refine_count(text: str) -> int:
    """A --refine value: a whole number >= 0."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of codes >= 0, got {text!r}")
    return int(text)


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum`` (a bad value is argparse's one-line
    usage error, exit status 2)."""

    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit()) or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return int(text)

    return parse
