"""The tiny VLM (notebook 14): image embeddings spliced into SmolLM2's chat, answer-only loss."""
import numpy as np
import pytest
import torch

import course_lib as cl
from course_lib import CourseError, vlm


@pytest.fixture(scope="module")
def model():
    return vlm.TinyVLM.build(kind="linear", seed=0)


def test_projector_shapes_and_bad_input():
    for kind in ("linear", "mlp"):
        p = vlm.Projector(hidden_size=32, kind=kind)
        assert p(torch.zeros(2, 5, vlm.TOKEN_DIM)).shape == (2, 5, 32)
    with pytest.raises(CourseError, match="kind"):
        vlm.Projector(kind="conv")
    with pytest.raises(CourseError, match="image tokens"):
        vlm.Projector(hidden_size=32)(torch.zeros(2, 5, 10))


def test_image_goes_where_the_user_content_starts(model):
    before, after = model.parts(vlm.DESCRIBE)
    tok = model.tok
    assert tok.decode(before).endswith("<|im_start|>user\n")
    assert tok.decode(after).startswith("\n" + vlm.DESCRIBE)
    assert tok.decode(after).endswith("<|im_start|>assistant\n")
    assert vlm.IMAGE not in tok.decode(before + after)


def test_embed_puts_projected_tokens_between_the_text_and_labels_only_the_answer(model):
    feats = np.random.default_rng(0).normal(size=(2, 16, vlm.TOKEN_DIM)).astype(np.float32)
    E, mask, lab = model.embed(feats, [vlm.DESCRIBE, "what colour is the bag ?"], ["red", "a small bag"])
    before, after = model.parts(vlm.DESCRIBE)
    with torch.no_grad():
        proj = model.projector(torch.as_tensor(feats))
    assert torch.allclose(E[0, len(before):len(before) + 16], proj[0])
    words = model.lm.get_input_embeddings()(torch.tensor(before))
    assert torch.allclose(E[0, :len(before)], words)
    answer = lab[0][lab[0] != -100].tolist()
    assert model.tok.decode(answer) == "red<|im_end|>"
    assert int(mask[0].sum()) == len(before) + 16 + len(after) + len(answer)
    El, maskl, _ = model.embed(feats, [vlm.DESCRIBE] * 2, left_pad=True)
    assert maskl[:, -1].all()                                  # left padding: every row ends at the right edge


def test_embed_rejects_mismatched_batches(model):
    with pytest.raises(CourseError, match="image tokens"):
        model.embed(np.zeros((2, 16, vlm.TOKEN_DIM), np.float32), [vlm.DESCRIBE])


def test_training_the_projector_lowers_the_loss_and_leaves_the_lm_frozen(model):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(4, 16, vlm.TOKEN_DIM)).astype(np.float32)
    qs, ans = [vlm.DESCRIBE] * 4, ["a red bag", "a blue boot", "a red bag", "a blue boot"]
    lm_before = [p.detach().clone() for p in list(model.lm.parameters())[:3]]
    with torch.no_grad():
        start = float(model.loss(feats, qs, ans))
    h = vlm.train(model, feats, qs, ans, num_steps=6, batch_size=4, lr=5e-3, progress=False)
    assert h["loss"][-1] < start
    assert all(torch.equal(a, b) for a, b in zip(lm_before, list(model.lm.parameters())[:3]))
    out = model.generate(feats[:2], qs[:2], max_new_tokens=4)
    assert len(out) == 2 and all(isinstance(s, str) for s in out)


def test_inspection_helpers_have_the_documented_shapes(model):
    feats = np.random.default_rng(2).normal(size=(16, vlm.TOKEN_DIM)).astype(np.float32)
    words, A = model.image_attention(feats, vlm.DESCRIBE, "a red bag")
    assert A.shape == (len(words), 16) and words[-1] == "<|im_end|>"
    assert (A >= 0).all() and (A.sum(1) <= 1 + 1e-5).all()
    assert model.lm.config._attn_implementation != "eager"      # switched back after the call
    near = model.nearest_words(feats, k=2)
    assert len(near) == 16 and all(len(n) == 2 for n in near)


def test_own_report_counts_the_items_the_caption_places():
    r = vlm.own_report("a small red plain bag at the top left and a large blue dotted boot at the bottom right")
    assert r.count == 2 and r.items == []


def test_lora_adapts_the_same_language_model(model):
    m = vlm.TinyVLM.build(kind="linear", seed=0)
    n_before = len(m.trainable())
    m.add_lora(r=2, layers=[29])
    assert len(m.trainable()) == n_before + 4                  # A and B for q_proj and v_proj of one layer
    assert cl.llm.END == "<|im_end|>"
