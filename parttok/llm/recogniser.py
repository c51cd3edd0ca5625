"""A recogniser of Bandai Namco content (10) and style (7) labels from real motion features,
the judge of generated motion and of captions (as Action2Motion and ACTOR judge theirs).

It shares no weights with any language model or tokenizer: a small temporal conv net over
normalised HumanML3D features (T, 263), mean-pooled over time into a 128-d embedding with
two linear heads. Trained on random crops of real clips; its embedding is the feature space
of FID and diversity.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from parttok.data import _BANDAI_CONTENT

CONTENTS = tuple(_BANDAI_CONTENT)
STYLES = ("active", "elderly", "exhausted", "feminine", "masculine", "normal", "youthful")
_VERBS = sorted(_BANDAI_CONTENT.items(), key=lambda kv: -len(kv[1]))  # longest phrase first
_STYLE = re.compile(r"\b(" + "|".join(STYLES) + r")\b")


def caption_labels(caption: str) -> tuple[int | None, int | None]:
    """(content index, style index) named in a caption such as 'a person waves the left hand
    in an elderly style.' (None where it names none)."""
    text = " ".join(caption.lower().split())
    content = next((CONTENTS.index(c) for c, verb in _VERBS if verb in text), None)
    style = _STYLE.search(text)
    return content, (STYLES.index(style[1]) if style else None)


class Recogniser(nn.Module):
    """Features (B, T, 263), normalised, with a frame mask (B, T) -> embedding (B, 128)."""

    def __init__(self, features: int = 263, width: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(features, width, 5, padding=2),
            nn.GELU(),
            nn.Conv1d(width, width, 5, padding=2),
            nn.GELU(),
            nn.Conv1d(width, width, 5, padding=2),
        )
        self.content = nn.Linear(width, len(CONTENTS))
        self.style = nn.Linear(width, len(STYLES))

    def embed(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.net(features.transpose(1, 2)).transpose(1, 2)  # (B, T, W)
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, W)

    def forward(self, features: torch.Tensor, mask: torch.Tensor):
        embedding = self.embed(features, mask)
        return self.content(embedding), self.style(embedding), embedding


def _padded(clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(c) for c in clips)
    batch = torch.zeros(len(clips), length, clips[0].shape[1])
    mask = torch.zeros(len(clips), length, dtype=torch.bool)
    for row, clip in enumerate(clips):
        batch[row, : len(clip)] = torch.from_numpy(np.asarray(clip, dtype=np.float32))
        mask[row, : len(clip)] = True
    return batch, mask


class MotionJudge:
    """A trained ``Recogniser`` with the statistics it normalises by."""

    def __init__(self, model: Recogniser, mean: np.ndarray, std: np.ndarray) -> None:
        self.model, self.mean, self.std = model.eval(), mean, std

    @classmethod
    def train(
        cls,
        clips: list[np.ndarray],
        labels: list[tuple[int, int]],
        steps: int = 1500,
        crop: int = 48,
        batch_size: int = 64,
        seed: int = 0,
    ) -> MotionJudge:
        """Train on raw feature clips (T, 263) with (content, style) labels."""
        generator = np.random.default_rng(seed)
        torch.manual_seed(seed)
        stacked = np.concatenate(clips)
        mean, std = stacked.mean(0), stacked.std(0) + 1e-6
        normalised = [((c - mean) / std).astype(np.float32) for c in clips]
        targets = torch.tensor(labels)  # (N, 2)
        model = Recogniser()
        optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, 2e-3, total_steps=steps)
        model.train()
        for _ in range(steps):
            chosen = generator.integers(0, len(clips), batch_size)
            windows = []
            for i in chosen:
                clip = normalised[i]
                size = min(len(clip), int(generator.integers(crop, 2 * crop + 1)))
                start = int(generator.integers(0, len(clip) - size + 1))
                windows.append(clip[start : start + size])
            features, mask = _padded(windows)
            content, style, _ = model(features, mask)
            loss = nn.functional.cross_entropy(
                content, targets[chosen, 0]
            ) + nn.functional.cross_entropy(style, targets[chosen, 1])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
        return cls(model, mean, std)

    @torch.no_grad()
    def judge(self, clips: list[np.ndarray], batch_size: int = 64):
        """(content predictions (N,), style predictions (N,), embeddings (N, 128)) of raw
        feature clips (T, 263)."""
        contents, styles, embeddings = [], [], []
        for start in range(0, len(clips), batch_size):
            chunk = [((c - self.mean) / self.std) for c in clips[start : start + batch_size]]
            features, mask = _padded(chunk)
            content, style, embedding = self.model(features, mask)
            contents.append(content.argmax(1))
            styles.append(style.argmax(1))
            embeddings.append(embedding)
        return (
            torch.cat(contents).numpy(),
            torch.cat(styles).numpy(),
            torch.cat(embeddings).numpy().astype(np.float64),
        )


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two sets of embeddings (N, D) and (M, D)."""
    from scipy import linalg

    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.real(linalg.sqrtm(cov_a @ cov_b))
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def diversity(embeddings: np.ndarray, pairs: int = 300, seed: int = 0) -> float:
    """Mean distance between random pairs of embeddings (the field's diversity)."""
    generator = np.random.default_rng(seed)
    first = generator.integers(0, len(embeddings), pairs)
    second = generator.integers(0, len(embeddings), pairs)
    return float(np.linalg.norm(embeddings[first] - embeddings[second], axis=1).mean())
