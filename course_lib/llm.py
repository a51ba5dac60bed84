"""Language-model helpers: chat prompts, greedy answers, answer-option scoring, LoRA.

Introduced in notebook 11 (a real pretrained instruct model, SmolLM2-135M-Instruct, reads
a perception report); reused by the vision-language lesson and the capstone. Nothing here
knows about FashionScenes: prompts are lists of chat messages, answers are strings.

    model, tok = cl.llm.load_lm()                      # frozen, shared, eval mode
    msgs = cl.llm.messages("Answer with one word.", "what colour is the bag ?")
    cl.llm.generate(model, tok, [msgs])                # -> ["red"]
    cl.llm.score_options(model, tok, msgs, ["red", "blue", "none"])   # log-likelihoods

A chat prompt is rendered by the tokenizer's chat template (``<|im_start|>role\\n ...
<|im_end|>``); the assistant's turn is opened and the model writes from there.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import config, models
from .config import CourseError

Messages = list[dict[str, str]]
END = "<|im_end|>"


def load_lm() -> tuple[Any, Any]:
    """The shared, frozen SmolLM2-135M-Instruct: ``(model, tokenizer)``.

    The model is in eval mode with ``requires_grad`` off, on ``config.device()``; repeated
    calls return the same pair (use :func:`lora_model` for a trainable copy). See
    ``models.load_small_lm`` for shapes. Introduced in notebook 11.
    """
    def frozen() -> tuple[Any, Any]:
        model, tok = models.load_small_lm()
        return model.requires_grad_(False), tok

    return models.memo("small-instruct-lm", frozen)


def messages(system: str | None, user: str, examples: Sequence[tuple[str, str]] = ()) -> Messages:
    """A chat: an optional system line, few-shot ``(user, assistant)`` pairs, then ``user``.

    Returns a list of ``{"role", "content"}`` dicts for the tokenizer's chat template.
    Introduced in notebook 11.
    """
    if not isinstance(user, str):
        raise CourseError(f"messages: user must be a string, got {type(user).__name__}")
    out: Messages = [{"role": "system", "content": system}] if system else []
    for question, answer in examples:
        out += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return out + [{"role": "user", "content": user}]


def prompt_ids(tok: Any, chat: Messages) -> list[int]:
    """Token ids (a list of ints) of ``chat`` with the assistant's turn opened."""
    if not isinstance(chat, list) or not all(isinstance(m, dict) and "role" in m for m in chat):
        raise CourseError("expected a chat: a list of {'role': ..., 'content': ...} dicts; "
                          "build one with cl.llm.messages(system, user)")
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    return list(ids)


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def _left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[Any, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def generate(model: Any, tok: Any, chats: Sequence[Messages], max_new_tokens: int = 24,
             batch_size: int = 16, progress: bool = False) -> list[str]:
    """Greedy answers, one string per chat (the assistant's turn, stripped).

    Prompts are left-padded into batches of ``batch_size``; generation stops at
    ``<|im_end|>`` or after ``max_new_tokens``. Deterministic (no sampling).
    Introduced in notebook 11.
    """
    import torch

    from .viz import progress as bar

    if not chats:
        return []
    rows = [prompt_ids(tok, c) for c in chats]
    end_id = tok.convert_tokens_to_ids(END)
    out: list[str] = []
    starts = range(0, len(rows), batch_size)
    for s in (bar(starts, desc="generate") if progress else starts):
        ids, mask = _left_pad(rows[s:s + batch_size], tok.pad_token_id)
        dev = _device(model)
        with torch.no_grad():
            gen = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=end_id, pad_token_id=tok.pad_token_id)
        for g in gen[:, ids.shape[1]:]:
            out.append(tok.decode(g, skip_special_tokens=True).strip())
    return out


def option_ids(tok: Any, options: Sequence[str]) -> list[list[int]]:
    """Token ids of each answer option followed by ``<|im_end|>`` (so "top" and "top left"
    are told apart: the end token must follow the whole option)."""
    if not options or not all(isinstance(o, str) and o for o in options):
        raise CourseError("options must be a non-empty list of non-empty strings")
    end_id = tok.convert_tokens_to_ids(END)
    return [tok(o, add_special_tokens=False)["input_ids"] + [end_id] for o in options]


def score_options(model: Any, tok: Any, chat: Messages, options: Sequence[str]) -> np.ndarray:
    """Log-likelihood of each option as the assistant's whole answer: float64 (n_options,).

    The prompt is run once; its key/value cache is repeated for the options, which are
    scored in one batch (each option's tokens plus ``<|im_end|>``, summed log-probabilities,
    so values are <= 0). Ranking options by this score is constrained decoding: the model
    can only pick an allowed answer. Introduced in notebook 11.
    """
    import torch

    prompt = prompt_ids(tok, chat)
    opts = option_ids(tok, options)
    dev = _device(model)
    with torch.no_grad():
        first = model(input_ids=torch.tensor([prompt], device=dev), use_cache=True)
        cache = first.past_key_values
        cache.batch_repeat_interleave(len(opts))
        width = max(len(o) for o in opts)
        ids = torch.full((len(opts), width), tok.pad_token_id, dtype=torch.long)
        for i, o in enumerate(opts):
            ids[i, :len(o)] = torch.tensor(o)
        # right padding after an option's end token cannot change its earlier positions
        mask = torch.ones(len(opts), len(prompt) + width, dtype=torch.long)
        logits = model(input_ids=ids.to(dev), past_key_values=cache,
                       attention_mask=mask.to(dev)).logits.float()
    logp = torch.cat([first.logits[:, -1:].float().expand(len(opts), 1, -1), logits[:, :-1]], 1)
    logp = logp.log_softmax(-1).cpu()
    scores = np.zeros(len(opts))
    for i, o in enumerate(opts):
        scores[i] = float(logp[i, torch.arange(len(o)), torch.tensor(o)].sum())
    return scores


def choose(model: Any, tok: Any, chats: Sequence[Messages], options: Sequence[Sequence[str]],
           progress: bool = False) -> list[str]:
    """For each chat, the option with the highest :func:`score_options` score.

    ``options[i]`` lists the allowed answers of chat ``i``. Introduced in notebook 11.
    """
    from .viz import progress as bar

    if len(chats) != len(options):
        raise CourseError(f"choose: {len(chats)} chats but {len(options)} option lists")
    pairs = list(zip(chats, options))
    return [opts[int(np.argmax(score_options(model, tok, c, opts)))]
            for c, opts in (bar(pairs, desc="score options") if progress else pairs)]


# ----------------------------------------------------------------------------- LoRA


def lora_model(r: int = 8, alpha: int = 16, layers: Sequence[int] | None = None,
               targets: Sequence[str] = ("q_proj", "v_proj"), seed: int = 0,
               base: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
    """A fresh SmolLM2 with LoRA adapters (PyPI ``peft``): ``(peft_model, tokenizer)``.

    Adapters of rank ``r`` (scale ``alpha / r``) on the ``targets`` projections of the
    decoder ``layers`` (indices 0..29; None = all 30); everything else is frozen, so only
    2 x r x 576-ish parameters per adapted matrix train. ``base``: an existing ``(model,
    tokenizer)`` to wrap instead of a fresh SmolLM2 (notebook 14 adapts the one behind its
    projector). Introduced in notebook 11.
    """
    from peft import LoraConfig, get_peft_model

    config.seed_everything(seed)
    base, tok = base if base is not None else models.load_small_lm()
    n_layers = base.config.num_hidden_layers
    if layers is not None and not all(0 <= int(i) < n_layers for i in layers):
        raise CourseError(f"layers must be indices 0..{n_layers - 1}, got {list(layers)}")
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets),
                     layers_to_transform=None if layers is None else [int(i) for i in layers],
                     task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft asks a deprecated transformers property
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(base, cfg), tok


def sft_rows(tok: Any, chats: Sequence[Messages], answers: Sequence[str],
             max_len: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Supervised fine-tuning rows: ``(ids, labels)``, both int64 (N, L), right-padded.

    Each row is the chat's prompt followed by its answer and ``<|im_end|>``; ``labels`` is
    -100 everywhere except the answer tokens (the loss counts only what the assistant
    writes). Rows longer than ``max_len`` raise a CourseError (shorten the prompt, e.g.
    with retrieval). Introduced in notebook 11.
    """
    if len(chats) != len(answers):
        raise CourseError(f"sft_rows: {len(chats)} chats but {len(answers)} answers")
    rows, labs = [], []
    for chat, answer in zip(chats, answers):
        prompt = prompt_ids(tok, chat)
        target = option_ids(tok, [answer])[0]
        if len(prompt) + len(target) > max_len:
            raise CourseError(f"sft_rows: a row has {len(prompt) + len(target)} tokens > "
                              f"max_len={max_len}; shorten the prompt or raise max_len")
        rows.append(prompt + target)
        labs.append([-100] * len(prompt) + target)
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), tok.pad_token_id, np.int64)
    labels = np.full((len(rows), width), -100, np.int64)
    for i, (r, lab) in enumerate(zip(rows, labs)):
        ids[i, :len(r)], labels[i, :len(lab)] = r, lab
    return ids, labels


def train_steps(params: Sequence[Any], step_loss: Any, n_rows: int, *, num_steps: int,
                batch_size: int = 8, lr: float = 2e-3, seed: int = 0, progress: bool = True,
                desc: str = "training") -> dict[str, Any]:
    """The course's small fine-tuning loop: ``num_steps`` AdamW steps on ``params``.

    ``step_loss(idx)`` returns the loss (a scalar tensor) of the rows ``idx`` (int64 array of
    ``batch_size`` row indices, drawn in a seeded random order, epoch after epoch, from
    ``n_rows`` rows). Linear warm-up over 10% of the steps, then cosine decay to 0; no weight
    decay. Returns ``{"loss": [per-step float], "seconds": float}``. Used by
    :func:`train_lora` and ``cl.vlm.train``. Introduced in notebook 11.
    """
    import math

    import torch

    from .viz import progress as bar

    params = list(params)
    if not params:
        raise CourseError("train_steps: nothing to train (no parameter has requires_grad)")
    if n_rows < 1 or num_steps < 1 or batch_size < 1:
        raise CourseError(f"train_steps: need n_rows, num_steps, batch_size >= 1; got {n_rows}, {num_steps}, {batch_size}")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, num_steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, 0.5 * (
        1 + math.cos(math.pi * max(0, s - warm) / max(1, num_steps - warm)))))
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n_rows) for _ in range(
        math.ceil(num_steps * batch_size / n_rows) + 1)])
    losses, start = [], time.perf_counter()
    steps = range(num_steps)
    for step in (bar(steps, desc=desc, unit="step") if progress else steps):
        loss = step_loss(order[step * batch_size:(step + 1) * batch_size])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return {"loss": losses, "seconds": time.perf_counter() - start}


def train_lora(model: Any, ids: np.ndarray, labels: np.ndarray, *, num_steps: int,
               batch_size: int = 8, lr: float = 2e-3, seed: int = 0,
               progress: bool = True) -> dict[str, Any]:
    """Train the adapters of ``model`` on rows from :func:`sft_rows` for ``num_steps`` steps.

    AdamW on the trainable parameters only, a linear warm-up (10% of the steps) then cosine
    decay; rows are drawn in a seeded random order, padded rows cut to the longest row of
    each batch. Returns ``{"loss": [per-step float], "seconds": float, "tokens": int}``.
    Introduced in notebook 11.
    """
    import torch

    if ids.shape != labels.shape or ids.ndim != 2:
        raise CourseError(f"ids and labels must be int arrays of one shape (N, L); got "
                          f"{ids.shape} and {labels.shape}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise CourseError("train_lora: the model has no trainable parameters (use lora_model)")
    dev = _device(model)
    tokens = [0]

    def step_loss(idx: np.ndarray) -> Any:
        lab = labels[idx]
        width = int(np.max(np.nonzero((lab != -100).any(0))[0])) + 1
        x = torch.from_numpy(ids[idx, :width]).to(dev)
        y = torch.from_numpy(lab[:, :width]).to(dev)
        logits = model(input_ids=x).logits[:, :-1].float()
        tokens[0] += int(x.numel())
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 y[:, 1:].reshape(-1), ignore_index=-100)

    model.train()
    out = train_steps(params, step_loss, len(ids), num_steps=num_steps, batch_size=batch_size,
                      lr=lr, seed=seed, progress=progress, desc="LoRA")
    model.eval()
    return {**out, "tokens": tokens[0]}
