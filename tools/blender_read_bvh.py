"""Import BVH files into Blender and write each pose bone's world head position per frame.

Runs inside Blender (its Python has no numpy), headless, on pairs of BVH and JSON paths:

    blender -b --factory-startup --python tools/blender_read_bvh.py -- a.bvh a.json ...

Each JSON file holds {"bones": [names], "heads": [[[x, y, z] per bone] per frame]}, one
frame per keyframe of the imported action (Blender frame 1 is the BVH's first frame). The
import keeps the file's axes and units (global_scale 1, forward Y, up Z), so the heads
compare directly with the joints the BVH was written from.
"""

import builtins
import json
import sys

import bpy

_OPEN = builtins.open


def _open_without_universal_newlines(file, mode="r", *args, **kwargs):
    """Blender 3.4's BVH importer opens files with mode "rU", which Python 3.11 refuses."""
    return _OPEN(file, mode.replace("U", ""), *args, **kwargs)


def read_heads(bvh_path: str) -> dict:
    """Import one BVH; return its bone names and per-frame world head positions."""
    before = set(bpy.data.objects)
    builtins.open = _open_without_universal_newlines
    try:
        bpy.ops.import_anim.bvh(
            filepath=bvh_path,
            global_scale=1.0,
            axis_forward="Y",
            axis_up="Z",
            rotate_mode="NATIVE",
            use_fps_scale=False,
            update_scene_duration=True,
        )
    finally:
        builtins.open = _OPEN
    (armature,) = [obj for obj in bpy.data.objects if obj not in before and obj.type == "ARMATURE"]
    scene = bpy.context.scene
    first, last = (round(frame) for frame in armature.animation_data.action.frame_range)
    bones = list(armature.pose.bones)
    heads = []
    for frame in range(first, last + 1):
        scene.frame_set(frame)
        heads.append([list(armature.matrix_world @ bone.head) for bone in bones])
    return {"bones": [bone.name for bone in bones], "heads": heads}


def main() -> None:
    arguments = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    if not arguments or len(arguments) % 2:
        raise SystemExit("usage: blender -b --python blender_read_bvh.py -- in.bvh out.json ...")
    for bvh_path, json_path in zip(arguments[::2], arguments[1::2], strict=True):
        with _OPEN(json_path, "w") as stream:
            json.dump(read_heads(bvh_path), stream)


main()
