"""course_lib.caption: tokenizer, model assembly, training hooks, saving, decoding."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import course_lib as cl
from course_lib import CourseError
from course_lib import caption as C


@pytest.fixture(scope="module")
def tok():
    return C.build_tokenizer()


@pytest.fixture(scope="module")
def scenes():
    return cl.data.make_scenes(12, "train", seed=3)


@pytest.fixture(scope="module")
def model(tok):
    cl.config.seed_everything(0)
    return C.build_captioner(tok, hidden_size=32, encoder_layers=1, decoder_layers=1).eval()


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_covers_the_grammar_and_round_trips(tok, scenes):
    assert len(tok) == 4 + len(C.grammar_words()) == 34
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    ids = C.encode_captions(tok, scenes.captions)
    assert ids.dtype == np.int64 and ids.shape[0] == len(scenes)
    assert (ids[:, 0] == tok.bos_token_id).all()
    lengths = (ids != tok.pad_token_id).sum(1)
    assert (ids[np.arange(len(ids)), lengths - 1] == tok.eos_token_id).all()
    assert lengths.tolist() == [len(c.split()) + 2 for c in scenes.captions]
    assert C.decode_ids(tok, ids) == scenes.captions
    assert C.decode_ids(tok, ids[0]) == scenes.captions[:1]  # one row also works


def test_tokenizer_keeps_hyphenated_words_whole(tok):
    ids = C.encode_captions(tok, ["a small red plain t-shirt at the top left"])
    assert tok.convert_ids_to_tokens(ids[0].tolist())[5] == "t-shirt"


def test_tokenizer_bad_inputs(tok):
    with pytest.raises(CourseError, match="outside the vocabulary"):
        C.encode_captions(tok, ["a small red unicorn"])
    with pytest.raises(CourseError, match="max_len"):
        C.encode_captions(tok, ["a small red bag at the top left"], max_len=5)
    with pytest.raises(CourseError, match="list"):
        C.encode_captions(tok, "a red bag")
    with pytest.raises(CourseError):
        C.word_tokenizer(["two words"])
    with pytest.raises(CourseError, match="tokenizer"):
        C.encode_captions(None, ["a red bag"])
    bigger = C.build_tokenizer(["a shiny bag"])
    assert len(bigger) == len(tok) + 1 and "shiny" in bigger.get_vocab()


# --------------------------------------------------------------------------- model


def test_stem_features_and_encoder_inputs(tok, model, scenes):
    F = C.stem_features(scenes.images[:5])
    assert F.shape == (5, C.STEM_CHANNELS, 8, 8) and F.dtype == torch.float32
    assert torch.isfinite(F).all() and float(F.std()) > 0
    # batching does not change the features (frozen CNN in eval mode)
    assert torch.allclose(F, C.stem_features(scenes.images[:5], batch_size=2), atol=1e-5)
    X = C.encoder_inputs(model, scenes.images[:5])
    assert torch.allclose(X, F)
    assert C.encoder_inputs(model, F) is not None and torch.equal(C.encoder_inputs(model, F), F)
    with pytest.raises(CourseError, match="float inputs"):
        C.encoder_inputs(model, torch.zeros(2, 3, 64, 64))
    pix = C.build_captioner(tok, encoder="pixels", hidden_size=32, encoder_layers=1, decoder_layers=1)
    P = C.encoder_inputs(pix, scenes.images[:4])
    assert P.shape == (4, 3, 64, 64) and P.dtype == torch.float32
    assert -1.0 <= float(P.min()) and float(P.max()) <= 1.0
    assert pix(pixel_values=P, decoder_input_ids=torch.ones(4, 3, dtype=torch.long)).logits.shape == (4, 3, len(tok))
    with pytest.raises(CourseError, match="encoder"):
        C.build_captioner(tok, encoder="resnet")


def test_captioner_shapes_and_loss(tok, model, scenes):
    X = C.encoder_inputs(model, scenes.images[:4])
    ids = torch.from_numpy(C.encode_captions(tok, scenes.captions[:4]))
    logits = model(pixel_values=X, decoder_input_ids=ids[:, :-1]).logits
    assert logits.shape == (4, ids.shape[1] - 1, len(tok))
    loss = C.caption_loss(model, X, ids)
    # an untrained model is close to uniform over the vocabulary
    assert abs(float(loss.detach()) - math.log(len(tok))) < 1.0
    step = C.caption_step(model, (X, ids), torch.device("cpu"))
    assert torch.isclose(step, loss)


def test_padding_does_not_change_the_loss(tok, model, scenes):
    X = C.encoder_inputs(model, scenes.images[:3])
    ids = torch.from_numpy(C.encode_captions(tok, scenes.captions[:3]))
    padded = torch.cat([ids, torch.zeros(3, 5, dtype=torch.long)], 1)
    assert torch.isclose(C.caption_loss(model, X, ids), C.caption_loss(model, X, padded), atol=1e-6)


def test_pixel_values_rejects_bad_images(scenes):
    with pytest.raises(CourseError, match="uint8"):
        C.pixel_values(scenes.images.astype(np.float32))
    with pytest.raises(CourseError, match="channels last"):
        C.pixel_values(scenes.images.transpose(0, 3, 1, 2))
    with pytest.raises(CourseError, match="64, 64, 3"):
        C.stem_features(scenes.images[:, :32])
    with pytest.raises(CourseError):
        C.caption_loader(torch.zeros(3, 40, 8, 8), np.zeros((2, 5), np.int64))


def test_training_reduces_the_loss_and_checkpoint_round_trip(tok, scenes, tmp_path):
    cl.config.seed_everything(0)
    m = C.build_captioner(tok, hidden_size=32, encoder_layers=1, decoder_layers=1)
    ids = C.encode_captions(tok, scenes.captions, C.MAX_LEN)
    loader = C.caption_loader(C.encoder_inputs(m, scenes.images), ids, batch_size=12, shuffle=True)
    before = C.caption_eval(m, loader, torch.device("cpu"))
    hist = cl.train.fit(m, loader, loader, num_epochs=25, lr=5e-3, step_fn=C.caption_step,
                        eval_fn=C.caption_eval, progress=False, device="cpu")
    after = C.caption_eval(m, loader, torch.device("cpu"))
    assert after["val_loss"] < 0.6 * before["val_loss"]
    assert after["val_token_acc"] > before["val_token_acc"]
    assert hist.monitor == "val_loss"
    path = C.save_captioner(m, tok, tmp_path / "cap", hist, {"recipe": {"n_train": 12, "encoder": "hybrid"}})
    assert cl.train.saved_recipe(path) == {"n_train": 12, "encoder": "hybrid"}
    assert not hasattr(C, "saved_recipe")  # one reader of stored recipes: cl.train.saved_recipe
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    m2, tok2, h2 = C.load_captioner(path, device="cpu")
    assert tok2.get_vocab() == tok.get_vocab()
    assert h2.train_loss == hist.train_loss
    assert C.generate(m2, tok2, scenes.images[:3]) == C.generate(m.eval(), tok, scenes.images[:3])
    # saving again replaces the folder in one step
    C.save_captioner(m, tok, path)
    assert (path / "tokenizer.json").exists()


def test_load_captioner_explains_a_missing_checkpoint(tmp_path):
    with pytest.raises(CourseError, match="notebook 10"):
        C.load_captioner(tmp_path / "nothing")


def test_checkpoint_path_names_the_scale():
    assert C.captioner_checkpoint("default").name == "captioner-default"
    assert C.captioner_checkpoint() == cl.train.checkpoint_dir("captioner")  # where load_or_train saves it
    with pytest.raises(CourseError):
        C.captioner_checkpoint("huge")


# --------------------------------------------------------------------------- decoding


def _manual_greedy(model, tok, images, max_len):
    X = C.encoder_inputs(model, images)
    ids = torch.full((len(X), 1), tok.bos_token_id)
    with torch.no_grad():
        for _ in range(max_len - 1):
            nxt = model(pixel_values=X, decoder_input_ids=ids).logits[:, -1].argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], 1)
    return C.decode_ids(tok, ids)


def test_greedy_matches_a_hand_written_loop(tok, model, scenes):
    got = C.generate(model, tok, scenes.images[:4], max_len=12)
    assert got == _manual_greedy(model, tok, scenes.images[:4], 12)


def test_beam_search_finds_likelier_captions_than_greedy(tok, model, scenes):
    imgs = scenes.images[:6]
    greedy = C.generate_ids(model, imgs, max_len=10)
    beam = C.generate_ids(model, imgs, method="beam", num_beams=5, length_penalty=0.0, max_len=10)
    lg, lb = C.sequence_logprob(model, imgs, greedy), C.sequence_logprob(model, imgs, beam)
    assert (lg <= 0).all() and (lb <= 0).all()
    # with no length normalisation beam search maximises log p: never worse than greedy in total
    assert lb.sum() >= lg.sum() - 1e-4


def test_sequence_logprob_matches_step_by_step_scores(tok, model, scenes):
    ids = C.generate_ids(model, scenes.images[:1], max_len=6)[0]
    X = C.encoder_inputs(model, scenes.images[:1])
    total = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            logits = model(pixel_values=X, decoder_input_ids=torch.tensor([ids[:t]])).logits[0, -1]
            total += float(torch.log_softmax(logits, -1)[ids[t]])
    assert C.sequence_logprob(model, scenes.images[:1], [ids])[0] == pytest.approx(total, abs=1e-4)


def test_sampling_is_reproducible_and_leaves_global_rng_alone(tok, model, scenes):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = C.generate(model, tok, scenes.images[:4], method="sample", seed=7, max_len=8)
    assert torch.equal(torch.get_rng_state(), state)
    b = C.generate(model, tok, scenes.images[:4], method="sample", seed=7, max_len=8)
    c = C.generate(model, tok, scenes.images[:4], method="sample", seed=8, max_len=8, temperature=3.0)
    assert a == b and a != c


def test_decoding_bad_options(tok, model, scenes):
    with pytest.raises(CourseError, match="method"):
        C.generate(model, tok, scenes.images[:2], method="nucleus")
    with pytest.raises(CourseError, match="temperature"):
        C.generate(model, tok, scenes.images[:2], method="sample", temperature=0)


def test_cross_attention_maps(tok, model, scenes):
    ids = C.encode_captions(tok, scenes.captions[:1])[0]
    ids = ids[ids != tok.pad_token_id].tolist()
    before = model.decoder.config._attn_implementation
    maps = C.cross_attention_maps(model, scenes.images[0], ids)
    assert model.decoder.config._attn_implementation == before  # eager only for this call
    assert maps.shape == (len(ids) - 1, 4, 4) and maps.dtype == np.float32  # 2x2 stem cells per token
    assert (maps >= 0).all() and np.all(maps.sum((1, 2)) <= 1 + 1e-5)
    with pytest.raises(CourseError):
        C.cross_attention_maps(model, scenes.images[:2], ids)


def test_length_buckets_cover_every_index_once_and_group_lengths():
    lengths = np.random.default_rng(0).integers(5, 40, size=103)
    sampler = C.LengthBuckets(lengths, batch_size=10, shuffle=True, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 11
    assert sorted(i for b in batches for i in b) == list(range(103))
    spread = np.mean([np.ptp(lengths[b]) for b in batches if len(b) > 1])
    assert spread < 0.5 * np.ptp(lengths)  # batches hold similar lengths
    assert [b for b in C.LengthBuckets(lengths, 10, shuffle=True, seed=1)] == batches  # seeded
    assert list(sampler) != batches  # a new order next epoch
    assert list(C.LengthBuckets(lengths, 50, shuffle=False))[0] == list(range(50))
    with pytest.raises(CourseError):
        C.LengthBuckets(lengths, 0)
