"""Benchmark: what one answer costs: the rule baseline vs SmolLM2 zero-shot vs SmolLM2 + LoRA.

Each method answers the same FashionScenes template questions from the same reports,
one question at a time (latency, as in a chat) and in batches of 16 (throughput). The
LoRA reader is trained here for ``--steps`` steps on template rows read through keyword
retrieval (notebook 11's recipe in miniature: the point is its cost, not its accuracy,
which notebook 11 measures on validation and test questions). Writes
``bench/results/llm_qa.json``.

    python bench/bench_llm_qa.py            # 40 questions, 30 LoRA steps
    python bench/bench_llm_qa.py --quick    # 8 questions, 2 LoRA steps
"""
from __future__ import annotations

import time

import numpy as np

import course_lib as cl
from course_lib import pipeline as pipe
from course_lib import scene_qa as sq
from _common import interleaved, parser, write


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--n", type=int, default=None, help="questions (default 40, --quick 8)")
    ap.add_argument("--steps", type=int, default=None, help="LoRA steps (default 30, --quick 2)")
    args = ap.parse_args(argv)
    n, steps = args.n or (8 if args.quick else 40), args.steps or (2 if args.quick else 30)
    repeats = args.repeats or (1 if args.quick else 3)
    cl.config.setup(seed=0, quiet=True)
    scenes = cl.data.make_scenes(400 + n, "train", seed=5)
    meas = pipe.measure(scenes.images)
    perception = pipe.fit_perception(scenes, meas, num_epochs=5, seed=0)
    reports = perception.describe(meas, scenes.captions)       # true captions: cost, not accuracy
    rng = np.random.default_rng(0)
    qs = [pipe.make_questions(g, rng, n=1)[0] for g in scenes.graphs]
    train_r, train_q, test_r, test_q = reports[:400], qs[:400], reports[400:], qs[400:]
    lm, tok = cl.llm.load_lm()
    lora, _ = cl.llm.lora_model(r=8, layers=range(20, 30))
    rows = cl.llm.sft_rows(tok, [sq.qa_chat(sq.retrieve_keywords(r, q.text), q.text) for r, q in zip(train_r, train_q)],
                           [q.answer for q in train_q], max_len=256)
    hist = cl.llm.train_lora(lora, *rows, num_steps=steps, batch_size=8, progress=False)

    chats = {"zero_shot": [sq.qa_chat(sq.fact_lines(r), q.text) for r, q in zip(test_r, test_q)],
             "lora": [sq.qa_chat(sq.retrieve_keywords(r, q.text), q.text) for r, q in zip(test_r, test_q)]}
    models = {"zero_shot": lm, "lora": lora}

    def answer(name, batch):
        if name == "rules":
            return [sq.rules_answer(r, q.text) for r, q in zip(test_r, test_q)]
        return cl.llm.generate(models[name], tok, chats[name], max_new_tokens=8, batch_size=batch)

    t1 = interleaved({m: (lambda m=m: answer(m, 1)) for m in ("rules", "zero_shot", "lora")}, repeats=repeats)
    t16 = interleaved({m: (lambda m=m: answer(m, 16)) for m in ("rules", "zero_shot", "lora")}, repeats=repeats)
    out = {}
    for m in t1:
        prompt = 0 if m == "rules" else float(np.mean([len(cl.llm.prompt_ids(tok, c)) for c in chats[m]]))
        out[m] = {"ms_per_answer_batch1": 1000 * t1[m]["median_s"] / n,
                  "answers_per_s_batch16": n / t16[m]["median_s"], "prompt_tokens": prompt}
        print(f"{m:>10}: {out[m]['ms_per_answer_batch1']:8.2f} ms per answer one at a time, "
              f"{out[m]['answers_per_s_batch16']:8.1f} answers/s in batches of 16, {prompt:.0f} prompt tokens")
    acc = {m: float(np.mean([sq.parse_answer(a) == q.answer for a, q in zip(answer(m, 16), test_q)]))
           for m in ("rules", "zero_shot", "lora")}
    write("llm_qa", {"what": "answers to FashionScenes template questions: rules vs SmolLM2-135M-Instruct "
                             "(zero-shot, whole report) vs SmolLM2 + LoRA (keyword retrieval)",
                     "n_questions": n, "lora_steps": steps, "lora_train_seconds": hist["seconds"],
                     "methods": out, "accuracy_on_these_questions": acc,
                     "note": "accuracy here is a plumbing check on a few questions; notebook 11 measures it"},
          args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
