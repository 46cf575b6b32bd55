"""Generate questions from DeepMind's mathematics_dataset (PyPI `mathematics-dataset`), every
training module of it: algebra, arithmetic, calculus, comparison, measurement, numbers,
polynomials and probability.

Usage: gen_mathematics.py WHEEL_DIR OUT_JSONL [--per-module N] [--seed N]

WHEEL_DIR is the unpacked wheel. Runs in its own virtual environment (scripts/fetch-data.sh):
the package needs the numpy and sympy of its time (numpy < 2, sympy < 1.5). Writes one line
{"module": ..., "question": ..., "answer": ...} per question, modules in sorted order. Each
module is seeded by its name, so its questions do not depend on which other modules exist.
"""

import argparse
import collections
import itertools
import json
import os
import random
import sys
import zlib
from pathlib import Path


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'algebra__linear_1d': sampler, ...} from the package's nested module dict."""
    flat = collections.OrderedDict()
    for name, value in tree.items():
        full = f"{prefix}__{name}" if prefix else name
        if isinstance(value, dict):
            flat.update(flatten(value, full))
        else:
            flat[full] = value
    return flat


class EntityNumbering:
    """The package shuffles a set of its composition entities, whose order follows their
    addresses in memory; hashing them by creation order (restarted for each module) makes the
    questions the same on every run. Equality stays identity."""

    def __init__(self):
        from mathematics_dataset.util import composition

        self.counter = itertools.count()
        init = composition.Entity.__init__
        numbering = self

        def numbered_init(entity, *args, **kwargs):
            entity._creation_order = next(numbering.counter)
            init(entity, *args, **kwargs)

        composition.Entity.__init__ = numbered_init
        composition.Entity.__hash__ = lambda entity: entity._creation_order

    def restart(self):
        self.counter = itertools.count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("wheel")
    parser.add_argument("out")
    parser.add_argument("--per-module", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    if os.environ.get("PYTHONHASHSEED") != "0":
        # the package draws variable names from a set of letters, whose order follows string
        # hashing: fix the hash seed, once, by running again (with the same interpreter options)
        os.execve(sys.executable, sys.orig_argv, {**os.environ, "PYTHONHASHSEED": "0"})

    sys.path.insert(0, args.wheel)
    import numpy as np

    if "object" not in np.__dict__:
        np.object = object  # an alias the package uses, removed in numpy 1.24
    from absl import flags
    from mathematics_dataset import generate
    from mathematics_dataset.modules import modules

    flags.FLAGS(["gen_mathematics"])  # the package's sampler reads its (default) flags
    numbering = EntityNumbering()
    # the training modules over their whole difficulty range, as the package's own generator does
    samplers = flatten(modules.train(generate._make_entropy_fn(0, 1)))
    lines = []
    for name in sorted(samplers):
        seed = zlib.crc32(f"{args.seed}/{name}".encode())
        random.seed(seed)
        np.random.seed(seed)
        numbering.restart()
        for _ in range(args.per_module):
            problem, _ = generate.sample_from_module(samplers[name])
            row = {"module": name, "question": str(problem.question), "answer": str(problem.answer)}
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.rename(out)
    print(f"{out.name}: {len(lines)} questions from {len(samplers)} modules", file=sys.stderr)


if __name__ == "__main__":
    main()
