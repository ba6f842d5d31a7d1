"""A local reward model (``AutoModelForSequenceClassification``) scoring conversations: the one scorer behind
reward-model external margins (``dpo_engine.margins.scoring``) and the reward-model judge (``evaluation.judges``).

A conversation is a list of chat messages ending with the assistant's response. It is rendered with the reward
model's chat template when it has one (the template writes the model's own special tokens, so the tokenizer adds
none), else as its messages' text one per paragraph with the tokenizer's usual special tokens. Texts longer than
``max_length`` tokens lose their beginning: a reward model reads its score at the end of the response. Texts are
scored in length-sorted batches (little padding), in bf16 on CUDA (``dtype="auto"``), and the model is loaded once.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch

from dpo_engine.errors import ModelError
from dpo_engine.models.loading import device_precision, enable_tf32, resolve_device, torch_dtype

Progress = Callable[[int, int], None]


class RewardModelScorer:
    """Scores conversations with one loaded reward model: its first logit, float array ``(n,)``."""

    def __init__(self, model_path: str | os.PathLike, *, dtype: str = "auto", device: str = "auto",
                 batch_size: int = 8, max_length: int = 4096):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = resolve_device(device)
        self.dtype = device_precision(dtype, self.device)
        self.batch_size, self.max_length = batch_size, max_length
        enable_tf32(self.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
            self.model = AutoModelForSequenceClassification.from_pretrained(model_path, dtype=torch_dtype(self.dtype))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load reward model from '{model_path}': {exc}") from exc
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.truncation_side = "left"
        self.model.to(self.device).eval()

    def render(self, conversation: list[dict]) -> str:
        """The text the reward model reads for one conversation."""
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(list(conversation), tokenize=False)
        return "\n\n".join(message["content"] for message in conversation)

    def score(self, conversations: Sequence[list[dict]], progress: Progress | None = None) -> np.ndarray:
        """Reward-model logits of ``conversations``, float64 ``(n,)`` in their order."""
        texts = [self.render(conversation) for conversation in conversations]
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length,
                             add_special_tokens=not self.tokenizer.chat_template)["input_ids"]
        order = np.argsort([-len(row) for row in ids], kind="stable")
        scores = np.zeros(len(ids))
        for start in range(0, len(ids), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                scores[rows] = self.model(**batch).logits[:, 0].float().cpu().numpy()
            if progress:
                progress(min(start + self.batch_size, len(ids)), len(ids))
        return scores
