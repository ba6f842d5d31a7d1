"""Per-sequence log-probabilities of responses: the one computation behind margins, losses and the scatter.

The same function scores pairs for the implicit margin and feeds every training loss, so the numbers the
dashboard shows are the numbers the trainer optimises.
"""

from __future__ import annotations

import torch


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Sum (or mean) of ``log p(label_t | tokens < t)`` over the masked tokens of each sequence.

    Args:
        logits: ``(B, T, V)``; ``logits[:, t]`` predicts ``labels[:, t + 1]`` (the usual causal shift is done here).
        labels: ``(B, T)`` token ids of the same positions.
        mask: ``(B, T)``, 1 where ``labels`` is a response token to score.
        average: divide by the number of masked tokens (per-token mean) instead of summing.

    Returns:
        ``(B,)`` float32 log-probabilities in nats.
    """
    logits = logits[:, :-1].float()
    labels = labels[:, 1:]
    mask = mask[:, 1:].to(logits.dtype)
    # logit[label] - logsumexp(logits) avoids materialising a second (B, T, V) log_softmax tensor.
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    summed = (token_logps * mask).sum(dim=-1)
    if average:
        return summed / mask.sum(dim=-1).clamp(min=1)
    return summed


def policy_logps(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Summed response log-probs of a collated batch (``dpo_engine.tokenization.collate``) in one forward pass.

    Only the last ``max response length + 1`` positions get logits (the batch is left-padded, so every response
    ends in the last column): the vocabulary projection is the single largest cost for small models.

    Returns ``chosen_logps``, ``rejected_logps`` (float32 nats) and ``chosen_tokens``, ``rejected_tokens``
    (response lengths), each ``(B,)``. Gradients flow unless called under ``torch.no_grad``/``inference_mode``.
    """
    device = next(model.parameters()).device
    response_mask = batch["response_mask"].to(device)
    keep = int(response_mask.sum(dim=-1).max()) + 1
    outputs = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        position_ids=batch["position_ids"].to(device),
        logits_to_keep=keep,
        use_cache=False,
    )
    logps = sequence_logps(outputs.logits, batch["input_ids"][:, -keep:].to(device), response_mask[:, -keep:])
    tokens = response_mask.sum(dim=-1)
    n_pairs = logps.shape[0] // 2
    return {
        "chosen_logps": logps[:n_pairs],
        "rejected_logps": logps[n_pairs:],
        "chosen_tokens": tokens[:n_pairs],
        "rejected_tokens": tokens[n_pairs:],
    }
