"""Build switchyard's labelled routing sets from real text shipped in PyPI packages.

Usage: build_sets.py GSM_WHEEL_DIR HUMANEVAL_WHEEL_DIR SHAREGPT_WHEEL_DIR MATHEMATICS_JSONL OUT_DIR [--seed N]

Each *_WHEEL_DIR is an unpacked wheel; MATHEMATICS_JSONL is gen_mathematics.py's output. Writes OUT_DIR/route-train.jsonl and route-eval.jsonl,
lines {"text": ..., "expert": "math" | "code" | "chat", "source": ...}.

Splits are by source unit, never by sample (sources.py), so the held-out set measures
generalisation:
  math  half GSM-Symbolic word problems, instantiated by the package's own generator (seeded),
        half mathematics_dataset questions (algebra, arithmetic, calculus, comparison,
        measurement, numbers, polynomials, probability), held out by module.
  code  HumanEval prompts plus ShareGPT first user turns that name a programming language or tool.
  chat  ShareGPT first user turns with no sign of code, technology or maths; turns that are
        neither clearly code nor clearly chat are left out.
Everything is deterministic for a seed.
"""

import json
import random
import sys
from pathlib import Path

from sources import (
    PAGE_CHROME,
    builder_args,
    classify_turn,
    conversation_split,
    gsm_problems,
    humaneval_problems,
    mathematics_problems,
    mostly_english,
    sharegpt_conversations,
    write_atomic,
)

N_TRAIN = 1000  # per domain
N_EVAL = 300  # per domain
MAX_CHARS = 3000  # longer first turns are pasted documents, not questions


def gsm_questions(wheel: Path, seed: int) -> dict:
    problems = gsm_problems(wheel, N_TRAIN, N_EVAL, seed)
    return {
        split: [{"text": q, "expert": "math", "source": f"gsm-symbolic/{index}"} for index, q, _ in rows]
        for split, rows in problems.items()
    }


def mathematics_questions(path: Path) -> dict:
    return {
        split: [{"text": q, "expert": "math", "source": f"mathematics-dataset/{module}"} for module, q, _ in rows]
        for split, rows in mathematics_problems(path).items()
    }


def humaneval_prompts(wheel: Path) -> dict:
    return {
        split: [{"text": p["prompt"], "expert": "code", "source": p["task_id"]} for p in problems]
        for split, problems in humaneval_problems(wheel).items()
    }


def sharegpt_split(wheel: Path) -> dict:
    out = {"code": {"train": [], "eval": []}, "chat": {"train": [], "eval": []}}
    seen = set()
    for conv_id, turns in sharegpt_conversations(wheel):
        speaker, text = turns[0]
        if speaker != "human":
            continue
        if not (20 <= len(text) <= MAX_CHARS) or not mostly_english(text) or text in seen:
            continue
        seen.add(text)
        if PAGE_CHROME.search(text):
            continue
        label = classify_turn(text)
        if label is None:
            continue  # ambiguous: neither clearly code nor plain conversation
        out[label][conversation_split(conv_id)].append({"text": text, "expert": label, "source": f"sharegpt/{conv_id}"})
    return out


def take(rng: random.Random, items: list, n: int) -> list:
    items = list(items)
    rng.shuffle(items)
    return items[:n]


def main() -> None:
    args = builder_args(__doc__, "gsm", "humaneval", "sharegpt", "mathematics")
    rng = random.Random(args.seed)

    gsm = gsm_questions(Path(args.gsm), args.seed)
    mathematics = mathematics_questions(Path(args.mathematics))
    human_eval = humaneval_prompts(Path(args.humaneval))
    share = sharegpt_split(Path(args.sharegpt))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", N_TRAIN), ("eval", N_EVAL)):
        code_rest = n - len(human_eval[split])
        rows = (
            take(rng, gsm[split], n // 2)
            + take(rng, mathematics[split], n - n // 2)
            + human_eval[split]
            + take(rng, share["code"][split], code_rest)
            + take(rng, share["chat"][split], n)
        )
        rng.shuffle(rows)
        counts = {d: sum(r["expert"] == d for r in rows) for d in ("math", "code", "chat")}
        if min(counts.values()) < n:
            sys.exit(f"build_sets.py: {split} split is short of data: {counts} (want {n} each)")
        write_atomic(out / f"route-{split}.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        print(f"route-{split}.jsonl: {len(rows)} lines {counts}", file=sys.stderr)


if __name__ == "__main__":
    main()
