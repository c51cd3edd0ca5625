"""Skeleton animations: motions side by side as 3D stick figures on one frame clock, written
as GIF (Pillow) or MP4 (imageio-ffmpeg, the ``video`` extra).

The scene (floor grid, root trajectories, titles) is drawn once; each frame only moves the
bone lines and blits them onto a copy of that background (a 100-frame clip renders in under
a second).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d import proj3d
from mpl_toolkits.mplot3d.art3d import Line3DCollection, Poly3DCollection
from PIL import Image, ImageColor

from parttok.constants import ANIMATION_SUFFIXES
from parttok.errors import InputError, ParttokError
from parttok.features import FPS, check_joints
from parttok.io import atomic_path
from parttok.metrics import REPORT_PARTS
from parttok.skeleton import KINEMATIC_CHAINS

# One colour per body-part group, shared by the animations and the plots.
PART_COLORS = {
    "root": "#222222",
    "torso": "#7b4fa0",
    "left_arm": "#1f6fd1",
    "right_arm": "#d62728",
    "left_leg": "#17a2b8",
    "right_leg": "#f08c1a",
}
MP4_MISSING = "MP4 needs the video extra: pip install parttok[video]"

_FLOOR_COLOR, _FLOOR_EDGE_COLOR, _GRID_COLOR = "#f3f3f3", "#cccccc", "#d9d9d9"
_CLOCK_COLOR = "#555555"
# Colours every GIF palette holds exactly; the rest of the palette adapts to the frames.
_KEY_COLORS = (
    "#ffffff",
    "#000000",
    _FLOOR_COLOR,
    _FLOOR_EDGE_COLOR,
    _GRID_COLOR,
    _CLOCK_COLOR,
    *PART_COLORS.values(),
)
_JOINT_PART = {joint: part for part, joints in REPORT_PARTS.items() for joint in joints}
# Every kinematic chain lies in one part after its first joint: one polyline per chain.
_CHAIN_COLORS = tuple(PART_COLORS[_JOINT_PART[chain[-1]]] for chain in KINEMATIC_CHAINS)
_CHAIN_INDICES = tuple(np.array(chain) for chain in KINEMATIC_CHAINS)
_HEADER_LINE_PIXELS = 16
_GRID_SPACING = 0.5  # metres between floor grid lines
_MIN_EXTENT = 1.2  # metres: the smallest horizontal extent shown
_PADDING = 0.3  # metres around the motion
_GIF_COLORS = 63  # plus one transparent index
_FILL = 0.96  # fraction of a panel the 3D box spans


def render_animation(
    motions: Sequence[np.ndarray],
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    caption: str | None = None,
    fps: int = FPS,
    panel_pixels: int = 240,
    dpi: int = 80,
    elevation: float = 15.0,
    azimuth: float = -60.0,
) -> Path:
    """Animate joint positions (T, 22, 3) (metres, Y up) side by side and write ``path``.

    The format follows the suffix: ``.gif`` (Pillow) or ``.mp4`` (needs the ``video``
    extra). All panels share axis limits and the frame clock; a shorter motion holds its
    last frame. Returns the written path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ANIMATION_SUFFIXES:
        raise InputError(f"{path}: cannot write {suffix or 'no suffix'!r}; use .gif or .mp4")
    if not motions:
        raise InputError(f"{path}: no motion to render")
    if titles is not None and len(titles) != len(motions):
        raise InputError(f"{path}: {len(titles)} titles for {len(motions)} motions")
    if fps < 1:
        raise InputError(f"{path}: fps must be positive, got {fps}")
    names = list(titles) if titles is not None else [f"motion {i}" for i in range(len(motions))]
    motions = [
        _to_display(check_joints(motion, name=name, min_frames=1))
        for motion, name in zip(motions, names, strict=True)
    ]
    writer = _mp4_writer() if suffix == ".mp4" else None
    frames = _render_frames(
        motions, titles, caption, fps, _round_up(panel_pixels, 16), dpi, elevation, azimuth
    )
    with atomic_path(path) as temporary:
        if writer is None:
            _write_gif(frames, temporary, fps)
        else:
            writer(frames, temporary, fps)
    return path


def _to_display(joints: np.ndarray) -> np.ndarray:
    """(T, 22, 3) Y-up (x, y, z) -> matplotlib's Z-up (x, -z, y); a rotation, not a mirror."""
    return np.stack((joints[..., 0], -joints[..., 2], joints[..., 1]), axis=-1)


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-int(value) // multiple) * multiple)


def _limits(motions: list[np.ndarray]) -> np.ndarray:
    """Shared (3, 2) display limits: the whole clip, padded, horizontal extents at least
    ``_MIN_EXTENT``, the floor (height 0) always in view."""
    points = np.concatenate([m.reshape(-1, 3) for m in motions])
    low, high = points.min(0), points.max(0)
    centre = (low + high) / 2
    half = np.maximum((high - low) / 2 + _PADDING, _MIN_EXTENT / 2)
    limits = np.stack((centre - half, centre + half), axis=-1)  # (3, 2)
    limits[2] = (min(0.0, low[2]), high[2] + 0.1)
    return limits


def _render_frames(
    motions: list[np.ndarray],
    titles: Sequence[str] | None,
    caption: str | None,
    fps: int,
    panel_pixels: int,
    dpi: int,
    elevation: float,
    azimuth: float,
) -> Iterator[np.ndarray]:
    """Yield (H, W, 3) uint8 frames; H and W are multiples of 16 (what video codecs want)."""
    count = len(motions)
    header = _HEADER_LINE_PIXELS * ((caption is not None) + (titles is not None))
    figure = Figure(dpi=dpi, facecolor="white")
    canvas = FigureCanvasAgg(figure)
    limits = _limits(motions)
    panels = []  # per panel: (axes, chain lines, pelvis marker, motion)
    for motion in motions:
        axes = figure.add_subplot(projection="3d", facecolor="none")
        _draw_scene(axes, motion, limits, elevation, azimuth)
        chains = [
            axes.plot([], [], [], color=color, linewidth=2.0, solid_capstyle="round")[0]
            for color in _CHAIN_COLORS
        ]
        pelvis = axes.plot([], [], [], "o", color=PART_COLORS["root"], markersize=3.5)[0]
        for artist in (*chains, pelvis):
            artist.set_animated(True)
        panels.append((axes, chains, pelvis, motion))
    panel_height = _fit_panels(figure, canvas, [p[0] for p in panels], limits, panel_pixels, header)
    height = panel_height + header
    for index, label in enumerate(titles or ()):
        figure.text(
            (index + 0.5) / count,
            1 - (header - 2) / height,
            label,
            ha="center",
            va="bottom",
            fontsize=9,
        )
    if caption is not None:
        figure.text(0.5, 1 - 2 / height, caption, ha="center", va="top", fontsize=10)
    clock = figure.text(0.005, 0.01, "", fontsize=7, color=_CLOCK_COLOR, animated=True)
    canvas.draw()
    background = canvas.copy_from_bbox(figure.bbox)
    for frame in range(max(len(m) for m in motions)):
        canvas.restore_region(background)
        for axes, chains, pelvis, motion in panels:
            pose = motion[min(frame, len(motion) - 1)]  # (22, 3)
            for line, chain in zip(chains, _CHAIN_INDICES, strict=True):
                line.set_data_3d(pose[chain, 0], pose[chain, 1], pose[chain, 2])
                axes.draw_artist(line)
            pelvis.set_data_3d(pose[:1, 0], pose[:1, 1], pose[:1, 2])
            axes.draw_artist(pelvis)
        clock.set_text(f"{frame / fps:.2f} s")
        figure.draw_artist(clock)
        yield np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _fit_panels(
    figure: Figure,
    canvas: FigureCanvasAgg,
    axes_list: list,
    limits: np.ndarray,
    width: int,
    header: int,
) -> int:
    """Size the figure and zoom the 3D boxes so the scene fills panels ``width`` wide and
    only as high as it needs; returns the panel height in pixels (a multiple of 16).

    A 3D axes always draws into a square, so each panel's axes is a ``width`` square centred
    on its panel strip, which may reach above or below it.
    """
    count = len(axes_list)
    figure.set_size_inches(count * width / figure.dpi, width / figure.dpi)
    for index, axes in enumerate(axes_list):
        axes.set_position((index / count, 0.0, 1.0 / count, 1.0))
    canvas.draw()
    axes = axes_list[0]
    corners = np.stack(np.meshgrid(*limits, indexing="ij")).reshape(3, 8)
    flat = np.column_stack(proj3d.proj_transform(*corners, axes.M)[:2])  # (8, 2)
    pixels = axes.transData.transform(flat)
    extent = pixels.max(0) - pixels.min(0)  # (2,) box width and height on screen
    panel_height = _round_up(min(width, width * extent[1] / extent[0]), 16)
    zoom = _FILL * min(width / extent[0], panel_height / extent[1])
    total = panel_height + header
    figure.set_size_inches(count * width / figure.dpi, total / figure.dpi)
    bottom = (panel_height - width) / 2 / total
    for index, axes in enumerate(axes_list):
        axes.set_position((index / count, bottom, 1.0 / count, width / total))
        axes.set_box_aspect(tuple(limits[:, 1] - limits[:, 0]), zoom=zoom)
    return panel_height


def _draw_scene(
    axes, motion: np.ndarray, limits: np.ndarray, elevation: float, azimuth: float
) -> None:
    """The static part of a panel: fixed limits, the floor and its grid, the root path."""
    axes.set_axis_off()
    axes.set_xlim(*limits[0])
    axes.set_ylim(*limits[1])
    axes.set_zlim(*limits[2])
    axes.set_box_aspect(tuple(limits[:, 1] - limits[:, 0]), zoom=1.0)
    axes.set_proj_type("ortho")
    axes.view_init(elev=elevation, azim=azimuth)
    axes.computed_zorder = False  # draw in the order added: floor, grid, path, skeleton
    (x0, x1), (y0, y1) = limits[0], limits[1]
    floor = [[(x0, y0, 0.0), (x1, y0, 0.0), (x1, y1, 0.0), (x0, y1, 0.0)]]
    axes.add_collection3d(
        Poly3DCollection(floor, facecolor=_FLOOR_COLOR, edgecolor=_FLOOR_EDGE_COLOR)
    )
    grid_x = np.arange(np.ceil(x0 / _GRID_SPACING), np.floor(x1 / _GRID_SPACING) + 1)
    grid_y = np.arange(np.ceil(y0 / _GRID_SPACING), np.floor(y1 / _GRID_SPACING) + 1)
    segments = [[(x * _GRID_SPACING, y0, 0.0), (x * _GRID_SPACING, y1, 0.0)] for x in grid_x]
    segments += [[(x0, y * _GRID_SPACING, 0.0), (x1, y * _GRID_SPACING, 0.0)] for y in grid_y]
    axes.add_collection3d(Line3DCollection(segments, colors=_GRID_COLOR, linewidths=0.6))
    root = motion[:, 0]  # (T, 3)
    axes.plot(root[:, 0], root[:, 1], np.zeros(len(root)), color=PART_COLORS["root"], linewidth=1.0)


def _write_gif(frames: Iterator[np.ndarray], path: Path, fps: int) -> None:
    """One palette for every frame, no dithering, and each pixel that did not change since
    the previous frame written as transparent, so the file compresses to little. Frames are
    converted as they come: only their palette indices are held."""
    first = next(frames)
    palette = _gif_palette(Image.fromarray(first))
    colors = palette.getpalette()[: 3 * _GIF_COLORS] + [255, 0, 255]  # + the transparent one

    def paletted() -> Iterator[Image.Image]:
        previous = None
        for frame in itertools.chain([first], frames):
            image = Image.fromarray(frame).quantize(palette=palette, dither=Image.Dither.NONE)
            indices = np.asarray(image)  # (H, W)
            shown = indices.copy()
            if previous is not None:
                shown[indices == previous] = _GIF_COLORS  # the transparent index
            previous = indices
            output = Image.frombytes("P", shown.shape[::-1], shown.tobytes())
            output.putpalette(colors)
            yield output

    images = paletted()
    next(images).save(
        path,
        format="GIF",
        save_all=True,
        append_images=images,
        duration=round(1000 / fps),
        loop=0,
        transparency=_GIF_COLORS,
        disposal=1,  # keep the previous frame under the transparent pixels
        optimize=False,
    )


def _gif_palette(image: Image.Image) -> Image.Image:
    """The scene's key colours exactly, the rest adapted to ``image`` (anti-aliasing blends)."""
    keys = [value for color in _KEY_COLORS for value in ImageColor.getrgb(color)]
    adaptive = image.quantize(
        colors=_GIF_COLORS - len(_KEY_COLORS), method=Image.Quantize.MAXCOVERAGE
    )
    palette = Image.new("P", (1, 1))
    palette.putpalette(keys + adaptive.getpalette()[: 3 * (_GIF_COLORS - len(_KEY_COLORS))])
    return palette


def _mp4_writer():
    """The MP4 writer, or a one-line ParttokError when the ``video`` extra is missing."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise ParttokError(MP4_MISSING) from None

    def write(frames: Iterator[np.ndarray], path: Path, fps: int) -> None:
        first = next(frames)
        height, width = first.shape[:2]
        stream = imageio_ffmpeg.write_frames(
            str(path),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            macro_block_size=16,
            output_params=["-f", "mp4"],  # the temporary's name does not end in .mp4
            ffmpeg_log_level="error",
        )
        stream.send(None)
        try:
            for frame in itertools.chain([first], frames):
                stream.send(frame)
        finally:
            stream.close()

    return write
