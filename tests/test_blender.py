"""Blender, the program users open our BVH files in, reads them as we mean them.

Needs Blender on the PATH (Debian: ``apt-get install -y --no-install-recommends blender``);
without it the test fails rather than skips.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from parttok.bvh import load_bvh, read_bvh, save_bvh
from parttok.skeleton import JOINT_NAMES

TOOL = Path(__file__).resolve().parents[1] / "tools" / "blender_read_bvh.py"


def blender_heads(paths: list[Path], tmp_path: Path) -> list[dict[str, np.ndarray]]:
    """Import each BVH in one headless Blender run; per file, bone name -> (F, 3) heads."""
    blender = shutil.which("blender")
    assert blender, "Blender is not installed: apt-get install -y --no-install-recommends blender"
    outputs = [tmp_path / f"{path.stem}.json" for path in paths]
    arguments = [str(item) for pair in zip(paths, outputs, strict=True) for item in pair]
    command = [blender, "-b", "--factory-startup", "--python", str(TOOL), "--", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and all(out.exists() for out in outputs), result.stderr[-2000:]
    heads = []
    for output in outputs:
        data = json.loads(output.read_text())
        positions = np.array(data["heads"])  # (F, bones, 3)
        heads.append({name: positions[:, b] for b, name in enumerate(data["bones"])})
    return heads


def test_blender_reads_saved_and_real_bvh(humanml3d_dir, bandai_dir, cmu_dir, iclone_dir, tmp_path):
    # what save_bvh writes: a HumanML3D clip (rotations only) and an imported Bandai Namco
    # clip whose hip and collar bones also need position channels
    humanml3d = np.load(humanml3d_dir / "new_joints" / "012314.npy")
    bandai = load_bvh(bandai_dir / "data" / "dataset-2_walk-turn-right_youthful_013.bvh").joints
    written = [(tmp_path / "humanml3d.bvh", humanml3d), (tmp_path / "bandai.bvh", bandai)]
    for path, joints in written:
        save_bvh(path, joints)
    saved = read_bvh(tmp_path / "bandai.bvh")
    channels = dict(zip(saved.names, saved.channels, strict=True))
    assert len(channels["left_hip"]) == 6  # Blender's handling of non-root positions is tested
    # real files: mixed rotation orders (CMU 3ds Max naming) and the Character Creator rig
    real = [cmu_dir / "131_01.bvh", iclone_dir / "002_03.bvh"]

    heads = blender_heads([path for path, _ in written] + real, tmp_path)

    for (path, joints), bones in zip(written, heads[: len(written)], strict=True):
        assert sorted(bones) == sorted(JOINT_NAMES), path
        blender = np.stack([bones[name] for name in JOINT_NAMES], axis=1)  # (T, 22, 3)
        assert blender.shape == joints.shape, path
        assert np.abs(blender - joints).max() < 1e-3, path  # metres
    for path, bones in zip(real, heads[len(written) :], strict=True):
        source = read_bvh(path)
        ours = source.global_positions()  # (F, J, 3), file units
        blender = np.stack([bones[name] for name in source.names], axis=1)
        scale = np.abs(ours).max()
        assert np.abs(blender - ours).max() < 1e-5 * scale, path
