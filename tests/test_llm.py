"""course_lib.llm on the real SmolLM2-135M-Instruct (offline, converted once into the cache)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib import CourseError, llm


@pytest.fixture(scope="module")
def lm():
    return llm.load_lm()


def test_chat_prompt_opens_the_assistant_turn(lm):
    model, tok = lm
    chat = llm.messages("Be brief.", "Name a colour.", [("Name a fruit.", "apple")])
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"]
    text = tok.decode(llm.prompt_ids(tok, chat))
    assert text.count("<|im_start|>") == 5 and text.endswith("<|im_start|>assistant\n")
    assert llm.load_lm()[0] is model and not any(p.requires_grad for p in model.parameters())
    with pytest.raises(CourseError):
        llm.prompt_ids(tok, "not a chat")
    with pytest.raises(CourseError):
        llm.messages(None, 3)


def test_score_options_equals_full_forward_passes(lm):
    model, tok = lm
    chat = llm.messages(None, "What colour is the sky on a clear day? One word.")
    options = ["blue", "top left", "none"]
    got = llm.score_options(model, tok, chat, options)
    prompt = llm.prompt_ids(tok, chat)
    for o, g in zip(llm.option_ids(tok, options), got):
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([prompt + o])).logits[0].float().log_softmax(-1)
        ref = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(o))
        assert g == pytest.approx(ref, abs=1e-3)
    assert got.shape == (3,) and np.all(got < 0)
    assert llm.choose(model, tok, [chat], [options]) == ["blue"]
    with pytest.raises(CourseError):
        llm.choose(model, tok, [chat], [])
    with pytest.raises(CourseError):
        llm.option_ids(tok, [""])


def test_generate_is_greedy_and_batched(lm):
    model, tok = lm
    chats = [llm.messages(None, "Say the word: red"), llm.messages(None, "What is 2 + 2? Answer with a number.")]
    one = llm.generate(model, tok, chats, max_new_tokens=6, batch_size=1)
    two = llm.generate(model, tok, chats, max_new_tokens=6, batch_size=2)
    assert one == two and all(isinstance(a, str) and a for a in one)
    assert llm.generate(model, tok, []) == []


def test_sft_rows_mask_everything_but_the_answer(lm):
    _, tok = lm
    chats = [llm.messages(None, "colour?"), llm.messages(None, "a longer question, please?")]
    ids, labels = llm.sft_rows(tok, chats, ["red", "top left"])
    assert ids.shape == labels.shape and ids.dtype == np.int64
    for row, lab, ans in zip(ids, labels, ["red", "top left"]):
        kept = lab[lab != -100]
        assert tok.decode(kept) == ans + "<|im_end|>"
        assert np.array_equal(row[lab != -100], kept)
    with pytest.raises(CourseError, match="max_len"):
        llm.sft_rows(tok, chats, ["red", "blue"], max_len=5)
    with pytest.raises(CourseError):
        llm.sft_rows(tok, chats, ["red"])


def test_lora_trains_only_adapters_and_lowers_the_loss(lm):
    _, tok = lm
    model, tok = llm.lora_model(r=4, layers=[28, 29], seed=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and (".28." in n or ".29." in n) for n in trainable)
    ids, labels = llm.sft_rows(tok, [llm.messages(None, "Secret word?")] * 4, ["zebra"] * 4)
    h = llm.train_lora(model, ids, labels, num_steps=12, batch_size=4, lr=5e-3, progress=False)
    assert len(h["loss"]) == 12 and h["loss"][-1] < 0.5 * h["loss"][0]
    assert llm.generate(model, tok, [llm.messages(None, "Secret word?")], max_new_tokens=4)[0] == "zebra"
    with pytest.raises(CourseError):
        llm.lora_model(layers=[30])
    with pytest.raises(CourseError):
        llm.train_lora(llm.load_lm()[0], ids, labels, num_steps=1)
