"""Instruction tuning of a pretrained causal LM on motion tokens, with pytorch-lightning.

``MotionLanguageModule`` loads the base (``parttok.llm.base``), adds the motion vocabulary of
a trained parttok tokenizer to its tokenizer and embeddings (new rows from the codebook
projection, ``parttok.tokens.add_motion_tokens``), and wraps it in LoRA through peft: low-rank
adapters on the chosen linear layers and only the new token rows trainable. The base's own
weights never change, so checkpoints and the exported model hold only what differs from the
base. ``ConversationDataModule`` serves ``parttok instruct`` files: the base's chat template,
loss on answers only, batches of similar lengths, one validation loader per task (so each
task's validation loss is logged apart).

At the end of training the module exports the tuned model to ``<default_root_dir>/llm``
(``parttok.llm.model.MotionLLM.from_pretrained`` loads it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path
from pickle import UnpicklingError

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, Sampler

from parttok.errors import InputError
from parttok.llm.base import (
    base_name,
    embedding_module_name,
    load_base,
    require_transformers,
    with_trainable_tokens,
)
from parttok.llm.chat import IGNORE, Example, encode_conversation, read_conversations
from parttok.llm.features import (
    PROJECTOR_FILE,
    FeatureProjector,
    add_placeholder,
    embeddings_with_features,
    feature_width,
    features_spec,
    pooled,
    record_features,
    with_placeholders,
)
from parttok.llm.moe import (
    PromptGate,
    PromptRouter,
    moe_spec,
    moe_tensors,
    with_moe_lora,
    zero_expert_loss,
)
from parttok.llm.prompt_embedding import PromptEmbedder
from parttok.llm.store import (
    MOE_FILE,
    export_tuned,
    load_projector,
    motion_vocabularies,
)
from parttok.tokens import add_motion_tokens

ADAPTERS = ("lora", "moe-lora", "none")
MOTION_INPUTS = ("tokens", "features")
GENERAL_TASK = (
    "general"  # conversations without motion; MoE-LoRA's gate sends them to the zero expert
)


class MotionLanguageModule(pl.LightningModule):
    """A base LLM with the motion vocabulary and LoRA adapters, tuned on conversations.

    Args:
        base: ``smollm2`` (the default base), a Hugging Face model folder or a ``.gguf`` file.
        tokenizer: the motion tokenizer whose codes the conversations hold (None: shipped).
        pose_tokenizer: a pose tokenizer, when the data has pose conversations.
        naming: token naming of the vocabulary (``parttok`` or ``motiongpt``).
        lora_rank, lora_alpha, lora_dropout: LoRA's rank, scale and dropout.
        target_modules: LoRA's target layers (``all-linear`` or a list of module names).
        embedding_init: new token rows from the ``codebook`` projection or the ``mean`` row.
        adapter: ``lora`` (peft's LoRA), ``moe-lora`` (``parttok.llm.moe``: LoRA experts
            of rank ``lora_rank`` and a zero expert, gated per prompt) or ``none`` (the LLM
            frozen: only the new token rows and a projector train, LLaVA's stage 1).
        motion_input: how motion enters the prompt: ``tokens`` (codes as tokens) or
            ``features`` (``parttok.llm.features``: the tokenizer's encoder features through
            a projector; motion -> text tasks only).
        projector: ``linear`` or ``mlp`` (features only).
        feature_pooling: ``parts`` (a placeholder per part and step) or ``steps`` (one per
            step, the parts side by side: whole-body features).
        projector_init: a tuned features model whose projector this one starts from (LLaVA's
            stage 2 after stage 1).
        experts: trainable experts of ``moe-lora``.
        zero_expert: give ``moe-lora`` the zero expert.
        gate_embedding: what the gate reads: ``minilm`` (a sentence encoder) or ``base`` (the
            LLM's mean input embedding of the instruction).
        gate_loss_weight: weight of the loss that sends ``general`` prompts to the zero expert.
        lr, weight_decay, warmup_steps: AdamW with a linear warm-up, then cosine to lr / 10.
        export_dir: where the tuned model goes when training ends (default: run root / llm).
    """

    def __init__(
        self,
        base: str = "smollm2",
        tokenizer: str | None = None,
        pose_tokenizer: str | None = None,
        naming: str = "parttok",
        lora_rank: int = 16,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        target_modules: str | list[str] = "all-linear",
        embedding_init: str = "codebook",
        adapter: str = "lora",
        experts: int = 4,
        zero_expert: bool = True,
        gate_embedding: str = "minilm",
        gate_loss_weight: float = 1.0,
        motion_input: str = "tokens",
        projector: str = "linear",
        feature_pooling: str = "parts",
        projector_init: str | None = None,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 50,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        require_transformers()
        from peft import LoraConfig, get_peft_model

        self.save_hyperparameters()
        model, self.hf_tokenizer = load_base(base)
        self.vocabularies, motion_tokenizers = motion_vocabularies(
            tokenizer, pose_tokenizer, naming
        )
        new_ids: list[int] = []
        for vocab, motion_tokenizer in zip(self.vocabularies, motion_tokenizers, strict=True):
            new_ids += add_motion_tokens(
                model, self.hf_tokenizer, vocab, motion_tokenizer, init=embedding_init
            )
        if adapter not in ADAPTERS:
            raise InputError(f"adapter must be one of {ADAPTERS}, got {adapter!r}")
        if motion_input not in MOTION_INPUTS:
            raise InputError(f"motion_input must be one of {MOTION_INPUTS}, got {motion_input!r}")
        self.projector: FeatureProjector | None = None
        if motion_input == "features":
            self.feature_tokenizer = motion_tokenizers[0]
            self.feature_token_id = add_placeholder(model, self.hf_tokenizer)
            new_ids.append(self.feature_token_id)
            width = feature_width(
                self.feature_tokenizer.model.code_dim,
                self.vocabularies[0].num_parts,
                feature_pooling,
            )
            hidden = model.get_input_embeddings().weight.shape[1]
            self.projector = FeatureProjector(projector, width, hidden)
            if projector_init:
                self.projector.load_state_dict(load_projector(projector_init, self.projector))
        self.new_token_ids = sorted(set(new_ids))
        self.router: PromptRouter | None = None
        if adapter == "none":
            self.llm = with_trainable_tokens(model, self.new_token_ids)
        elif adapter == "lora":
            config = LoraConfig(
                r=lora_rank,
                lora_alpha=lora_alpha,
                lora_dropout=lora_dropout,
                target_modules=target_modules,
                trainable_token_indices={embedding_module_name(model): self.new_token_ids},
                task_type="CAUSAL_LM",
            )
            self.llm = get_peft_model(model, config)
        else:
            self.llm = with_moe_lora(
                model,
                self.new_token_ids,
                target_modules,
                experts,
                lora_rank,
                lora_alpha,
                lora_dropout,
                zero_expert,
            )
            embedder = PromptEmbedder(gate_embedding, model, self.hf_tokenizer)
            gate = PromptGate(embedder.dim, experts + zero_expert)
            self.router = PromptRouter(embedder, gate, self.llm.moe_gate)
        self.strict_loading = False  # checkpoints hold only the trainable weights
        self.train_started: float | None = None
        self.train()  # the base loads in eval mode; training wants LoRA's dropout

    def forward(self, batch: dict):
        """The LM's output on a collated batch (and, for MoE-LoRA, the gate weights (B, E))."""
        weights = None
        if self.router is not None:
            weights = self.router(batch["prompts"])  # (B, E)
        inputs = {"input_ids": batch["input_ids"]}
        if self.projector is not None:
            inputs = {
                "inputs_embeds": embeddings_with_features(
                    self.llm.get_input_embeddings(),
                    batch["input_ids"],
                    batch["features"],
                    self.projector,
                    self.feature_token_id,
                )
            }
        out = self.llm(**inputs, attention_mask=batch["attention_mask"], labels=batch["labels"])
        return out, weights

    def _losses(self, batch: dict, stage: str, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(language-model loss, loss to minimise): the second adds the gate loss of
        MoE-LoRA with a zero expert. Logs the mean gate weight of each expert."""
        out, weights = self(batch)
        size = len(batch["input_ids"])
        if weights is None:
            return out.loss, out.loss
        for column, mean in enumerate(weights.mean(0)):
            self.log(
                f"{stage}/gate{column}/{name}", mean, batch_size=size, add_dataloader_idx=False
            )
        if not self.hparams.zero_expert:
            return out.loss, out.loss
        general = torch.tensor([t == GENERAL_TASK for t in batch["tasks"]], device=weights.device)
        gate_loss = zero_expert_loss(weights, general)
        self.log(f"{stage}/gate_loss/{name}", gate_loss, batch_size=size, add_dataloader_idx=False)
        return out.loss, out.loss + self.hparams.gate_loss_weight * gate_loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        _, loss = self._losses(batch, "train", "all")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        task = self.trainer.datamodule.val_tasks[dataloader_idx]
        loss, _ = self._losses(batch, "val", task)
        size = len(batch["input_ids"])
        self.log(f"val/{task}", loss, batch_size=size, add_dataloader_idx=False)
        self._val_losses.append((float(loss) * size, size))

    def on_validation_epoch_start(self) -> None:
        self._val_losses: list[tuple[float, int]] = []

    def on_validation_epoch_end(self) -> None:
        total = sum(n for _, n in self._val_losses)
        if total:
            mean = sum(s for s, _ in self._val_losses) / total
            self.log("val/loss", mean, prog_bar=True)

    def configure_optimizers(self):
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            trainable, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        total = max(1, self.trainer.max_steps) if self.trainer.max_steps > 0 else 1000
        warmup = max(1, self.hparams.warmup_steps)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # only what training changes: the adapters and the new token rows
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in trainable
        }

    def on_train_start(self) -> None:
        self.train_started = time.monotonic()

    def on_train_end(self) -> None:
        if self.trainer.global_rank != 0:
            return
        target = self.hparams.export_dir or str(Path(self.trainer.default_root_dir) / "llm")
        training = {"global_step": int(self.global_step)}
        if self.train_started is not None:
            training["seconds"] = round(time.monotonic() - self.train_started, 1)
        export_tuned(
            self.llm,
            target,
            base=base_name(self.hparams.base),
            vocabularies=self.vocabularies,
            token_ids=self.new_token_ids,
            tokenizers=(self.hparams.tokenizer, self.hparams.pose_tokenizer),
            training=training,
            **self.adapter_export(),
        )
        rank_zero_info(f"tuned model: {target}")

    def adapter_export(self) -> dict:
        """``export_tuned``'s ``extra_meta`` and ``tensor_files``: the MoE-LoRA's experts and
        gate, the features model's projector."""
        hp = self.hparams
        meta: dict = {"adapter": {"type": hp.adapter}}
        files: dict[str, dict[str, torch.Tensor]] = {}
        if self.router is not None:
            meta["adapter"] = moe_spec(
                hp.experts, hp.lora_rank, hp.lora_alpha, hp.zero_expert, hp.gate_embedding,
                hp.target_modules,
            )  # fmt: skip
            files[MOE_FILE] = moe_tensors(self.llm.get_base_model(), self.router)
        if self.projector is not None:
            code_dim = int(self.feature_tokenizer.model.code_dim)
            meta["motion_input"] = features_spec(hp.projector, hp.feature_pooling, code_dim)
            files[PROJECTOR_FILE] = self.projector.state_dict()
        return {"extra_meta": meta, "tensor_files": files}


class LengthGroupedBatches(Sampler[list[int]]):
    """Shuffled batches of similar lengths (less padding): the examples are shuffled, cut
    into pools of ``pool`` batches, sorted by length within a pool, batched, and the batches
    shuffled. Seeded by ``seed`` and the epoch."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, pool: int = 32):
        self.lengths, self.batch_size, self.seed, self.pool = lengths, batch_size, seed, pool
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        span = self.batch_size * self.pool
        batches = []
        for start in range(0, len(order), span):
            pool = sorted(order[start : start + span], key=self.lengths.__getitem__)
            batches += [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        rng.shuffle(batches)
        return iter(batches)


def collate(examples: list[Example], pad_id: int) -> dict:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (B, L), with each
    conversation's ``tasks`` and user turn (``prompts``)."""
    length = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "labels": labels,
        "tasks": [e.task for e in examples],
        "prompts": [e.user for e in examples],
        "features": [e.features for e in examples if e.features is not None],
    }


class ConversationDataModule(pl.LightningDataModule):
    """Conversations from ``parttok instruct`` files, tokenised by the module's base.

    Args:
        train_path: the training conversations (``.jsonl`` or ``.json``; or a list of files).
        val_path: validation conversations (a file or a list; None: no validation).
        tasks: keep only these tasks (None: all).
        exclude_captions: captions held out of tuning: every conversation about a clip
            with one of them is left out of ``train_path`` (new combinations to test on).
        max_length: longer conversations are left out (and counted), never cut.
        batch_size: conversations per step.
        val_per_task: at most this many validation conversations per task (evenly spaced).
        features_from: folders of the conversations' clips (HumanML3D layout), for a model
            that reads motion features instead of tokens.
        seed: batch order.
    """

    def __init__(
        self,
        train_path: str | list[str],
        val_path: str | list[str] | None = None,
        tasks: list[str] | None = None,
        exclude_captions: list[str] | None = None,
        max_length: int = 384,
        batch_size: int = 8,
        val_per_task: int = 64,
        features_from: list[str] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_examples: list[Example] = []
        self.val_examples: dict[str, list[Example]] = {}
        self.val_tasks: list[str] = []
        self.reader: MotionLanguageModule | None = None

    def setup(self, stage: str) -> None:
        module = self.trainer.lightning_module
        hf_tokenizer = module.hf_tokenizer
        self.pad_id = hf_tokenizer.pad_token_id
        self.reader = module if module.projector is not None else None
        hp = self.hparams
        held_out = set(hp.exclude_captions or ())
        train_paths = _paths(hp.train_path)
        records = _usable(_conversations(train_paths), hp.tasks, held_out)
        self.train_examples = self._encode(hf_tokenizer, records, ", ".join(train_paths))
        if not self.train_examples:
            raise InputError(f"{', '.join(train_paths)}: no conversations to train on")
        if hp.val_path:
            val_paths = _paths(hp.val_path)
            val_records = _usable(_conversations(val_paths), hp.tasks, set())
            by_task: dict[str, list[Example]] = {}
            for example in self._encode(hf_tokenizer, val_records, ", ".join(val_paths)):
                by_task.setdefault(example.task, []).append(example)
            self.val_tasks = sorted(by_task)
            self.val_examples = {t: _evenly(by_task[t], hp.val_per_task) for t in self.val_tasks}

    def _encode(self, hf_tokenizer, records: list[dict], path: str) -> list[Example]:
        features: list = [None] * len(records)
        if self.reader is not None:
            records, features = self._with_features(records, path)
        encoded = [
            encode_conversation(
                hf_tokenizer, r["user"], r["assistant"], r["task"], self.hparams.max_length
            )
            for r in records
        ]
        encoded = [
            None if e is None else dataclasses.replace(e, features=f)
            for e, f in zip(encoded, features, strict=True)
        ]
        kept = [e for e in encoded if e is not None]
        if len(kept) < len(encoded):
            rank_zero_info(
                f"{path}: {len(encoded) - len(kept)} conversation(s) longer than "
                f"{self.hparams.max_length} tokens left out"
            )
        return kept

    def _with_features(self, records: list[dict], path: str) -> tuple[list[dict], list]:
        """Records about motion with their motion replaced by placeholders, and the encoder
        features (rows per placeholder) that fill them; records without a clip's features
        (``features_from``) or without a motion in the prompt are left out."""
        hp, module = self.hparams, self.reader
        if not hp.features_from:
            raise InputError("a features model needs data.features_from (the clips' folders)")
        vocab, pooling = module.vocabularies[0], module.hparams.feature_pooling
        latents = record_features(records, hp.features_from, module.feature_tokenizer)
        kept, rows = [], []
        for record, latent in zip(records, latents, strict=True):
            if latent is None:
                continue
            row = pooled(latent, pooling)
            user = with_placeholders(record["user"], vocab, len(row))
            if user is not None:
                kept.append(record | {"user": user})
                rows.append(torch.from_numpy(row))
        if len(kept) < len(records):
            rank_zero_info(f"{path}: {len(records) - len(kept)} conversation(s) without features")
        return kept, rows

    def train_dataloader(self) -> DataLoader:
        lengths = [len(e.input_ids) for e in self.train_examples]
        return DataLoader(
            self.train_examples,
            batch_sampler=LengthGroupedBatches(lengths, self.hparams.batch_size, self.hparams.seed),
            collate_fn=lambda batch: collate(batch, self.pad_id),
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [
            DataLoader(
                self.val_examples[task],
                batch_size=self.hparams.batch_size,
                collate_fn=lambda batch: collate(batch, self.pad_id),
            )
            for task in self.val_tasks
        ]


def _paths(paths: str | list[str]) -> list[str]:
    return [paths] if isinstance(paths, str) else [str(p) for p in paths]


def _conversations(paths: list[str]) -> list[dict]:
    return [record for path in paths for record in read_conversations(path)]


def _usable(records, tasks: list[str] | None, held_out: set[str]) -> list[dict]:
    """Records of the wanted tasks, without any about a clip that has a held-out caption."""
    records = [r for r in records if tasks is None or r["task"] in tasks]
    excluded = {r.get("clip") for r in records if r.get("caption") in held_out}
    return [r for r in records if not (r.get("clip") in excluded and r.get("clip") is not None)]


def _evenly(items: list, count: int) -> list:
    if len(items) <= count:
        return items
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def read_json(path: str | Path) -> dict:
    """A JSON object from ``path``; one InputError when unreadable."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise InputError(f"{path}: unreadable JSON ({str(error)[:80]})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object")
    return value


def export_checkpoint(checkpoint: str | Path, target: str | Path) -> Path:
    """Export the tuned model of a ``parttok tune`` checkpoint (say a run stopped by a kill)
    to ``target``, as the end of training would; loads only tensors and plain types."""
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        options = {k: v for k, v in saved["hyper_parameters"].items() if not k.startswith("_")}
        state, step = saved["state_dict"], int(saved["global_step"])
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, UnpicklingError) as error:
        message = str(error).strip().splitlines()[0][:120] if str(error).strip() else ""
        raise InputError(f"{checkpoint}: not a readable tune checkpoint ({message})") from None
    module = MotionLanguageModule(**options)
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    if trainable - set(state):
        raise InputError(f"{checkpoint}: lacks {len(trainable - set(state))} trainable weights")
    module.load_state_dict(state, strict=False)
    return export_tuned(
        module.llm,
        target,
        base=base_name(options.get("base")),
        vocabularies=module.vocabularies,
        token_ids=module.new_token_ids,
        tokenizers=(options.get("tokenizer"), options.get("pose_tokenizer")),
        training={"global_step": step},
        **module.adapter_export(),
    )
