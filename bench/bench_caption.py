"""Benchmark: greedy caption generation, course_lib's way vs the textbook loop.

course_lib's way: ``cl.caption.generate_ids`` (transformers' ``generate``: the image encoded
once, the decoder's keys and values cached between steps, all images of a batch together).
Naive: the loop from a first lesson, one image at a time, calling the whole model on the prefix
so far at every step (the encoder and every earlier position recomputed each time). Both start
from the same encoder inputs (``cl.caption.encoder_inputs``, computed once) and must
produce the same captions (checked). Uses notebook 10's captioner when its checkpoint exists,
otherwise a randomly initialised one of the same shape (timing only; the report says which).
Writes ``bench/results/caption.json``.

    python bench/bench_caption.py            # 16 test scenes, 2 interleaved repeats
    python bench/bench_caption.py --quick    # 4 scenes, 1 repeat
"""
from __future__ import annotations


import torch

import course_lib as cl
from _common import interleaved, parser, write


def load_model():
    for scale in ("default", "full", "smoke"):
        path = cl.caption.captioner_checkpoint(scale)
        if (path / "config.json").exists():
            model, tok, _ = cl.caption.load_captioner(path, device="cpu")
            return model, tok, f"notebook 10 checkpoint ({scale} profile)"
    tok = cl.caption.build_tokenizer()
    cl.config.seed_everything(0)
    return cl.caption.build_captioner(tok).eval(), tok, "random initialisation (no checkpoint found)"


@torch.no_grad()
def naive_greedy(model, images) -> list[list[int]]:
    """One image at a time, the full model on the whole prefix at every step, no cache."""
    bos = model.generation_config.decoder_start_token_id
    eos = model.generation_config.eos_token_id
    max_len = model.generation_config.max_length
    X = cl.caption.encoder_inputs(model, images)  # float (N, C, H, W), as the encoder reads it
    out = []
    for x in X:
        ids = [bos]
        while len(ids) < max_len:
            logits = model(pixel_values=x[None], decoder_input_ids=torch.tensor([ids])).logits
            ids.append(int(logits[0, -1].argmax()))
            if ids[-1] == eos:
                break
        out.append(ids)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--n", type=int, default=None, help="test scenes (default 16, --quick 4)")
    args = ap.parse_args(argv)
    n = args.n or (4 if args.quick else 16)
    repeats = args.repeats or (1 if args.quick else 2)

    model, tok, source = load_model()
    scenes = cl.data.make_scenes(n, "test", seed=0).images
    images = cl.caption.encoder_inputs(model, scenes)  # computed once; both paths start from it
    cl.caption.generate_ids(model, images[:2])  # warm-up (the naive loop is slow enough not to need one)
    ids: dict[str, list[list[int]]] = {}
    t = interleaved({"naive_no_cache_per_image": lambda: ids.__setitem__("naive", naive_greedy(model, images)),
                     "course_lib_generate": lambda: ids.__setitem__("fast", cl.caption.generate_ids(model, images))},
                    repeats=repeats, warmup=0)
    fast_ids, slow_ids = ids["fast"], ids["naive"]
    agree = sum(a == b for a, b in zip(fast_ids, slow_ids)) / n
    for v in t.values():
        v["captions_per_s"] = n / v["median_s"]
    speedup = t["course_lib_generate"]["speedup_vs_naive_no_cache_per_image"]
    mean_len = sum(len(i) for i in fast_ids) / n
    print(f"{n} captions ({source}, mean length {mean_len:.1f} tokens): naive "
          f"{t['naive_no_cache_per_image']['median_s']:.2f} s, generate {t['course_lib_generate']['median_s']:.2f} s, "
          f"speed-up {speedup:.1f}x; identical captions {agree:.0%}")
    write("caption", {"what": "greedy captioning of FashionScenes test scenes", "model": source, "n_scenes": n,
                      "repeats": repeats, "mean_tokens": mean_len, "identical_captions": agree,
                      "timings": t, "speedup": speedup}, args.out)
    return 0 if agree >= 0.95 else 1


if __name__ == "__main__":
    raise SystemExit(main())
