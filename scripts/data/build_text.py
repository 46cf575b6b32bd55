"""Build switchyard's language-model text: what the math, code and chat experts are fine-tuned
on (scripts/make-experts.sh) and what their perplexity is measured on (scripts/quality.sh).

Usage: build_text.py GSM_WHEEL_DIR HUMANEVAL_WHEEL_DIR SHAREGPT_WHEEL_DIR STDLIB_DIR OUT_DIR [--seed N]

Writes OUT_DIR/text-{math,code,chat}-{train,eval}.txt. Held-out text comes from held-out sources
only (sources.py: the same templates, problems and conversations the routing sets hold out):
  math  GSM-Symbolic questions with their worked answers (the generator's <<calc>> marks removed)
  code  Python files of the CPython standard library (split by a hash of their path; test suites
        left out) plus HumanEval prompts with their canonical solutions
  chat  ShareGPT conversations whose first user turn is plain conversation (sources.classify_turn)
Each train file is cut at TRAIN_CHARS and each eval file at EVAL_CHARS, on document boundaries.
"""

import random
import re
import sys
from pathlib import Path

from sources import (
    PAGE_CHROME,
    builder_args,
    classify_turn,
    conversation_split,
    gsm_problems,
    humaneval_problems,
    mostly_english,
    sharegpt_conversations,
    split_of,
    write_atomic,
)

# What scripts/make-experts.sh trains on: about 60k tokens of code (seen twice, in overlapping
# contexts) and 120k of chat (once), in about 35 minutes on 2 cores with math; measured
# alternatives are in docs/BENCHMARKS.md. Code is cut at 240k: all 900k characters of the
# training files, in disjoint contexts, specialised less (held-out 7.820 against 7.615). Math is
# cut shorter: GSM-Symbolic's 80 training templates repeat, and the math expert's held-out
# perplexity (templates it never saw; base 5.365) was best when trained on about 95 problems and
# worse with more: the first 50k characters gave 4.728, 100k 4.943, 160k 5.098.
TRAIN_CHARS = {"math": 50_000, "code": 240_000, "chat": 600_000}
EVAL_CHARS = 60_000  # per domain: about 15k tokens for llama-perplexity
MAX_DOC_CHARS = 8_000  # longer files and conversations are cut, so no single one dominates
GSM_PROBLEMS = {"train": 600, "eval": 150}
CALC_MARK = re.compile(r"<<[^>]*>>")
SPEAKERS = {"human": "User", "gpt": "Assistant"}


def math_docs(wheel: Path, seed: int) -> dict:
    problems = gsm_problems(wheel, GSM_PROBLEMS["train"], GSM_PROBLEMS["eval"], seed)
    return {
        split: [f"Question: {q}\nAnswer: {CALC_MARK.sub('', a)}" for _, q, a in rows]
        for split, rows in problems.items()
    }


# Not code a person wrote: test suites, installed packages, generated codec and grammar tables,
# bundled documentation strings, demos.
STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings",
               "lib2to3", "pydoc_data", "turtledemo", "idlelib"}


def stdlib_files(stdlib: Path):
    """(path relative to the stdlib, text) of its hand-written Python modules."""
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if set(rel.parts[:-1]) & STDLIB_SKIP:
            continue
        if rel.name.startswith("test_"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) >= 200:
            yield str(rel), text


def code_docs(humaneval: Path, stdlib: Path) -> dict:
    out = {"train": [], "eval": []}
    for split, problems in humaneval_problems(humaneval).items():
        out[split].extend(p["prompt"] + p["canonical_solution"] for p in problems)
    for rel, text in stdlib_files(stdlib):
        out[split_of("stdlib/" + rel)].append(text[:MAX_DOC_CHARS])
    return out


def chat_docs(sharegpt: Path) -> dict:
    out = {"train": [], "eval": []}
    for conv_id, turns in sharegpt_conversations(sharegpt):
        if turns[0][0] != "human" or classify_turn(turns[0][1]) != "chat":
            continue
        lines = [f"{SPEAKERS[who]}: {text}" for who, text in turns if who in SPEAKERS and text]
        doc = "\n".join(lines)
        if len(lines) < 2 or not mostly_english(doc) or PAGE_CHROME.search(doc):
            continue
        out[conversation_split(conv_id)].append(doc[:MAX_DOC_CHARS])
    return out


def cut(rng: random.Random, docs: list, limit: int) -> str:
    """Shuffled documents, blank-line separated, up to `limit` characters (whole documents)."""
    docs = list(docs)
    rng.shuffle(docs)
    kept, size = [], 0
    for doc in docs:
        if size + len(doc) + 2 > limit:
            continue
        kept.append(doc)
        size += len(doc) + 2
    return "\n\n".join(kept) + "\n"


def main() -> None:
    args = builder_args(__doc__, "gsm", "humaneval", "sharegpt", "stdlib")
    rng = random.Random(args.seed)

    domains = {
        "math": math_docs(Path(args.gsm), args.seed),
        "code": code_docs(Path(args.humaneval), Path(args.stdlib)),
        "chat": chat_docs(Path(args.sharegpt)),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for domain, splits in domains.items():
        for split, limit in (("train", TRAIN_CHARS[domain]), ("eval", EVAL_CHARS)):
            text = cut(rng, splits[split], limit)
            if len(text) < 0.9 * limit:
                sys.exit(f"build_text.py: {domain} {split} text is short: {len(text)} characters, want {limit}")
            name = f"text-{domain}-{split}.txt"
            write_atomic(out / name, text)
            print(f"{name}: {len(text)} characters from {len(splits[split])} documents", file=sys.stderr)


if __name__ == "__main__":
    main()
