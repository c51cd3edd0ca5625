"""``parttok compose BASE.ptok DONOR.ptok --parts right_arm --out OUT.ptok``: a token file
whose codes are BASE's with some parts' codes taken from DONOR.

Both files must come from the same part tokenizer (whole-body codes do not compose). The
donor's steps repeat from its start when it is shorter than BASE and are cut when longer.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from parttok.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", metavar="BASE.ptok", help="token file whose codes are kept")
    parser.add_argument(
        "donor",
        metavar="DONOR.ptok",
        help="token file the parts come from (repeated or cut to BASE's length)",
    )
    parser.add_argument(
        "--parts",
        required=True,
        help="comma-separated part names taken from DONOR; the shipped model's are root, torso, "
        "left_arm, right_arm, left_leg, right_leg",
    )
    parser.add_argument("--out", required=True, metavar="OUT.ptok", help="token file to write")


def run(args: argparse.Namespace) -> int:
    from parttok.composition import compose_codes, part_indices
    from parttok.tokenfile import load_tokens, save_tokens

    base = load_tokens(args.base)
    donor = load_tokens(args.donor)
    if donor.checkpoint != base.checkpoint:
        raise InputError(
            f"{args.donor}: made by tokenizer {donor.checkpoint}, {args.base} by "
            f"{base.checkpoint}; compose codes of one tokenizer"
        )
    if base.kind != "codes":
        raise InputError(f"{args.base}: holds continuous features; compose needs codes")
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    codes = compose_codes(base.codes, donor.codes, part_indices(parts, base.parts))
    source = f"{base.source or args.base} with {','.join(parts)} of {donor.source or args.donor}"
    save_tokens(args.out, replace(base, codes=codes, source=source))
    print(f"wrote {args.out}: {len(codes)} steps, {', '.join(parts)} from {args.donor}")
    return 0
