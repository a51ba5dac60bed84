"""A tiny vision-language model, the LLaVA recipe: frozen image tokens -> projector -> language model.

Introduced in notebook 14. The image side is DINOv2-S (frozen): a FashionScene resized to
112 x 112 gives 8 x 8 patch tokens, averaged to a 4 x 4 grid (16 tokens of width 384, in
reading order). A small trainable :class:`Projector` maps each token into SmolLM2's
embedding space (width 576). The projected tokens are placed inside the chat template where
the user's content goes, in place of the text marker :data:`IMAGE`, and the language model
reads them like words::

    <|im_start|>system\\n Answer briefly.<|im_end|>
    <|im_start|>user\\n [16 image embeddings] \\n what colour is the bag ?<|im_end|>
    <|im_start|>assistant\\n red<|im_end|>

Stage 1 (alignment) trains the projector alone on captions, the language model frozen;
stage 2 (instruction tuning) adds LoRA adapters to the language model and trains both on
question/answer turns (Liu et al., 2023, *Visual Instruction Tuning*; Liu et al., 2024,
*Improved Baselines with Visual Instruction Tuning*). Nothing here is specific to
FashionScenes except :func:`scene_tokens`' defaults.

    feats = cl.vlm.scene_tokens(scenes.images, key="train-0")     # (N, 16, 384) float32
    vlm = cl.vlm.TinyVLM.build(kind="mlp")                         # projector + frozen SmolLM2
    cl.vlm.train(vlm, feats, [cl.vlm.DESCRIBE] * N, scenes.captions, num_steps=100)
    vlm.generate(feats[:4], [cl.vlm.DESCRIBE] * 4)                 # -> four captions
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from . import cache, config, llm, models
from .config import CourseError

#: the marker written in the chat text where the image embeddings go (never tokenised)
IMAGE = "<image>"
#: the stage-1 instruction: a caption is the answer
DESCRIBE = "Describe the picture."
#: the short system line (without one, SmolLM2's template inserts a 20-token default)
SYSTEM = "Answer briefly."
#: DINOv2-S token width and the default grid of image tokens
TOKEN_DIM = 384
GRID = 4


def scene_tokens(images: np.ndarray, key: str | None = None, size: int = 112, grid: int = GRID,
                 progress: bool = True) -> np.ndarray:
    """Frozen DINOv2-S tokens of images: float32 (N, grid * grid, 384), values roughly -10..10.

    ``images``: uint8 RGB (N, H, W, 3). Each image is resized to ``size`` (a multiple of 14:
    ``(size / 14)**2`` patches) and its patch tokens are averaged over a ``grid`` x ``grid``
    grid of regions, in reading order (``course_lib.fusion.vit_features``). With ``key`` the
    result is kept in the course's feature cache (``cl.cache``) under that name, so a
    re-run never recomputes it: give each distinct image set its own key. Introduced in
    notebook 14.
    """
    from . import fusion

    def compute() -> np.ndarray:
        return fusion.vit_features(images, size=size, grid=grid, progress=progress)["grid"]

    if key is None:
        return compute()
    out = cache.cached(f"vlm-dinov2-{key}-{len(images)}-{size}-{grid}", compute)
    if out.shape != (len(images), grid * grid, TOKEN_DIM):
        raise CourseError(f"cached tokens under {key!r} have shape {out.shape}, expected "
                          f"{(len(images), grid * grid, TOKEN_DIM)}: use a different key per image set")
    return out


class Projector(nn.Module):
    """Image tokens -> language-model embeddings: float (B, T, 384) -> float (B, T, 576).

    ``kind="linear"``: one linear map (LLaVA). ``kind="mlp"``: linear, GELU, linear
    (LLaVA-1.5's two-layer MLP). The output is scaled to the typical norm of SmolLM2's word
    embeddings at initialisation, so the model first sees image tokens of a familiar size.
    Introduced in notebook 14.
    """

    def __init__(self, in_dim: int = TOKEN_DIM, hidden_size: int = 576, kind: str = "mlp"):
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise CourseError(f"Projector kind must be 'linear' or 'mlp', got {kind!r}")
        self.kind = kind
        self.norm = nn.LayerNorm(in_dim)
        if kind == "linear":
            self.net = nn.Linear(in_dim, hidden_size)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.norm.normalized_shape[0]:
            raise CourseError(f"Projector: expected float (B, T, {self.norm.normalized_shape[0]}) image tokens, "
                              f"got shape {tuple(x.shape)}")
        return self.net(self.norm(x))


class TinyVLM(nn.Module):
    """A projector in front of a (frozen or LoRA-adapted) SmolLM2.

    ``lm``: a causal LM (``LlamaForCausalLM`` or a peft wrapper of one); ``tok``: its
    tokenizer; ``projector``: a :class:`Projector`. :meth:`embed` builds the
    ``inputs_embeds`` of a batch; :meth:`loss` is the next-token loss on the answer tokens
    only; :meth:`generate` decodes greedily. Introduced in notebook 14.
    """

    def __init__(self, lm: Any, tok: Any, projector: Projector, system: str = SYSTEM):
        super().__init__()
        self.lm, self.projector, self.tok, self.system = lm, projector, tok, system
        self.end_id = tok.convert_tokens_to_ids(llm.END)
        self._parts: dict[str, tuple[list[int], list[int]]] = {}

    @classmethod
    def build(cls, kind: str = "mlp", seed: int = 0) -> "TinyVLM":
        """A fresh projector (seeded) and a fresh frozen SmolLM2 (not the shared one, so LoRA
        can be added to it later)."""
        config.seed_everything(seed)
        lm, tok = models.load_small_lm()
        lm.requires_grad_(False).eval()
        proj = Projector(hidden_size=lm.config.hidden_size, kind=kind)
        with torch.no_grad():  # match the output scale to the word embeddings
            words = lm.get_input_embeddings().weight
            out = proj(torch.randn(256, 1, TOKEN_DIM)).squeeze(1)
            scale = float(words.norm(dim=-1).median() / out.norm(dim=-1).median())
            last = proj.net if kind == "linear" else proj.net[-1]
            last.weight.mul_(scale)
            last.bias.mul_(scale)
        return cls(lm, tok, proj.to(next(lm.parameters()).device))

    def add_lora(self, r: int = 8, alpha: int = 16, layers: Sequence[int] | None = None,
                 targets: Sequence[str] = ("q_proj", "v_proj")) -> "TinyVLM":
        """Stage 2: wrap the language model with LoRA adapters (``cl.llm.lora_model``)."""
        self.lm, _ = llm.lora_model(r=r, alpha=alpha, layers=layers, targets=targets, base=(self.lm, self.tok))
        return self

    def parts(self, question: str) -> tuple[list[int], list[int]]:
        """The chat's token ids before and after the image: ``(before, after)``, lists of ints."""
        if question not in self._parts:
            chat = [{"role": "system", "content": self.system},
                    {"role": "user", "content": f"{IMAGE}\n{question}"}]
            text = self.tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            before, after = text.split(IMAGE)
            enc = lambda s: self.tok(s, add_special_tokens=False)["input_ids"]
            self._parts[question] = (enc(before), enc(after))
        return self._parts[question]

    def _device(self) -> torch.device:
        return next(self.projector.parameters()).device

    def embed(self, feats: Any, questions: Sequence[str], answers: Sequence[str] | None = None,
              left_pad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``inputs_embeds`` (B, L, 576), ``attention_mask`` (B, L) int64 and ``labels`` (B, L)
        int64 (-100 except on answer tokens; ``None`` without answers). Rows are right-padded
        for training, left-padded (``left_pad=True``) for generation."""
        X = torch.as_tensor(np.asarray(feats), dtype=torch.float32, device=self._device())
        if X.ndim != 3 or len(X) != len(questions) or (answers is not None and len(answers) != len(X)):
            raise CourseError(f"embed: expected image tokens (B, T, {TOKEN_DIM}) and B questions"
                              f"{' and answers' if answers is not None else ''}; got {tuple(X.shape)}, "
                              f"{len(questions)} questions")
        image = self.projector(X)
        table = self.lm.get_input_embeddings()
        rows, labels = [], []
        for i, q in enumerate(questions):
            before, after = self.parts(q)
            target = [] if answers is None else self.tok(answers[i], add_special_tokens=False)["input_ids"] + [self.end_id]
            text = torch.tensor(before + after + target, device=X.device)
            e = table(text)
            rows.append(torch.cat([e[:len(before)], image[i], e[len(before):]]))
            labels.append([-100] * (len(before) + image.shape[1] + len(after)) + target)
        width = max(len(r) for r in rows)
        B, D = len(rows), rows[0].shape[-1]
        E = torch.zeros(B, width, D, dtype=rows[0].dtype, device=X.device)
        mask = torch.zeros(B, width, dtype=torch.long, device=X.device)
        lab = torch.full((B, width), -100, dtype=torch.long, device=X.device)
        for i, (r, y) in enumerate(zip(rows, labels)):
            sl = slice(width - len(r), width) if left_pad else slice(0, len(r))
            E[i, sl], mask[i, sl] = r, 1
            lab[i, sl] = torch.tensor(y, device=X.device)
        return E, mask, (lab if answers is not None else None)

    def loss(self, feats: Any, questions: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        """Mean next-token cross-entropy over the answer tokens (and their ``<|im_end|>``)."""
        E, mask, lab = self.embed(feats, questions, answers)
        logits = self.lm(inputs_embeds=E, attention_mask=mask).logits[:, :-1].float()
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1),
                                           ignore_index=-100)

    @torch.no_grad()
    def generate(self, feats: Any, questions: Sequence[str], max_new_tokens: int = 40,
                 batch_size: int = 32, progress: bool = False) -> list[str]:
        """Greedy answers, one string per image: stops at ``<|im_end|>`` or ``max_new_tokens``."""
        from .viz import progress as bar

        self.eval()
        out: list[str] = []
        starts = range(0, len(questions), batch_size)
        for s in (bar(starts, desc="VLM generate", unit="batch") if progress else starts):
            E, mask, _ = self.embed(feats[s:s + batch_size], questions[s:s + batch_size], left_pad=True)
            gen = self.lm.generate(inputs_embeds=E, attention_mask=mask, max_new_tokens=max_new_tokens,
                                   do_sample=False, eos_token_id=self.end_id, pad_token_id=self.tok.pad_token_id)
            out += [self.tok.decode(g, skip_special_tokens=True).strip() for g in gen]
        return out

    @torch.no_grad()
    def image_attention(self, feats: np.ndarray, question: str, answer: str) -> tuple[list[str], np.ndarray]:
        """How much each answer token attends to each image token, averaged over layers and heads.

        ``feats``: (T, 384) one image. Returns the answer's tokens (strings, ``<|im_end|>``
        included) and float (n_tokens, T): for the position that *predicts* each answer token,
        its attention weights on the T image positions (rows sum to the share of attention that
        went to the image, <= 1). Needs eager attention, switched on for this call.
        """
        E, mask, lab = self.embed(feats[None], [question], [answer])
        start = len(self.parts(question)[0])
        T = feats.shape[0]
        base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        old = base.config._attn_implementation
        base.set_attn_implementation("eager")
        try:
            att = self.lm(inputs_embeds=E, attention_mask=mask, output_attentions=True).attentions
        finally:
            base.set_attn_implementation(old)
        A = torch.stack([a[0].float().mean(0) for a in att]).mean(0)        # (L, L)
        pos = (lab[0] != -100).nonzero().flatten()                           # answer positions
        ids = lab[0, pos].tolist()
        return self.tok.convert_ids_to_tokens(ids), A[pos - 1, start:start + T].cpu().numpy()

    @torch.no_grad()
    def nearest_words(self, feats: np.ndarray, k: int = 3) -> list[list[str]]:
        """For each image token of one image ((T, 384)), the ``k`` vocabulary tokens whose input
        embeddings are nearest (cosine) to its projection."""
        words = self.lm.get_input_embeddings().weight.float()
        p = self.projector(torch.as_tensor(feats[None], dtype=torch.float32, device=self._device()))[0].float()
        sim = nn.functional.normalize(p, dim=-1) @ nn.functional.normalize(words, dim=-1).T
        top = sim.topk(k, dim=-1).indices.cpu().tolist()
        return [self.tok.convert_ids_to_tokens(row) for row in top]

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def train(vlm: TinyVLM, feats: np.ndarray, questions: Sequence[str], answers: Sequence[str], *,
          num_steps: int, batch_size: int = 16, lr: float = 1e-3, seed: int = 0,
          progress: bool = True, desc: str = "VLM") -> dict[str, Any]:
    """Train what in ``vlm`` is trainable (the projector; LoRA adapters after ``add_lora``) on
    (image tokens, question, answer) rows for ``num_steps`` steps of ``batch_size``.

    AdamW, linear warm-up over 10% of the steps then cosine decay, rows in a seeded random
    order (``cl.llm.train_steps``). Returns ``{"loss": [per-step float], "seconds": float}``.
    Introduced in notebook 14.
    """
    if not (len(feats) == len(questions) == len(answers)) or not len(feats):
        raise CourseError(f"vlm.train: expected one question and answer per image; got {len(feats)} images, "
                          f"{len(questions)} questions, {len(answers)} answers")
    params = vlm.trainable()

    def step_loss(idx: np.ndarray) -> torch.Tensor:
        return vlm.loss(feats[idx], [questions[i] for i in idx], [answers[i] for i in idx])

    vlm.projector.train()
    vlm.lm.train()
    out = llm.train_steps(params, step_loss, len(feats), num_steps=num_steps, batch_size=batch_size,
                          lr=lr, seed=seed, progress=progress, desc=desc)
    vlm.eval()
    return out


def own_report(caption: str) -> Any:
    """The VLM's own description of a scene as a perception report (``pipeline.SceneReport``
    with the caption and its parsed item count), so notebook 11's verdicts apply: a wrong
    answer that agrees with what the VLM itself described is a *perception* error, one that
    contradicts it a *hallucination*. Introduced in notebook 14."""
    from . import data, pipeline

    items = [it for it in data.parse_caption(caption) if "position" in it]
    return pipeline.SceneReport(len(items), caption, [])
