"""Build the ``reference_heldout`` quality task and the training-split fingerprint shipped with it.

Items are (context -> continuation) pairs cut at word boundaries from *held-out* documents only: a context of
256..384 bytes ending at the end of a word and a continuation of 16..32 bytes that starts with the space before
the next word. A candidate is rejected when any of its 12-word shingles occurs anywhere in the training split
(full check at build time), so duplicated boilerplate between documents cannot leak training text into the task.

For the test-time check without shipping the 6 MB training text, ``train_shingles.npy`` holds the sorted 32-bit
hashes of the training 12-word shingles whose hash is 0 mod 8 (content-defined sampling: a shingle is sampled in
the task iff it is sampled in training, so any shared sampled shingle reveals overlap).

Usage: ``python -m tor_exp.reference.make_task --data /tmp/refdata``.
"""

from __future__ import annotations

import argparse
import json
import random
import zlib
from pathlib import Path

import numpy as np

from tor_exp.reference import ASSETS_DIR, TASK_DIR
from tor_exp.reference.data import read_split

SHINGLE_WORDS = 12
SAMPLE_MOD = 8
CTX_MIN, CTX_MAX = 256, 384
CONT_MIN, CONT_MAX = 16, 32


def shingle_hashes(text: str, k: int = SHINGLE_WORDS) -> np.ndarray:
    """crc32 of every k-word window (words = whitespace-split tokens joined by one space), as uint32."""
    words = text.split()
    if len(words) < k:
        return np.zeros(0, dtype=np.uint32)
    return np.array([zlib.crc32(" ".join(words[i:i + k]).encode()) for i in range(len(words) - k + 1)],
                    dtype=np.uint32)


def sampled(h: np.ndarray) -> np.ndarray:
    """The content-defined sample of hashes that is shipped (0 mod SAMPLE_MOD)."""
    return h[h % SAMPLE_MOD == 0]


def candidate_items(doc: dict, rng: random.Random, n: int) -> list[dict]:
    """Up to n random (context, continuation) cuts of one ASCII-only paragraph window of a document."""
    text = doc["text"]
    spaces = [i for i, c in enumerate(text) if c == " "]
    out = []
    for _ in range(n * 20):
        if len(out) >= n or len(spaces) < 2:
            break
        start = rng.choice(spaces) + 1  # context starts at a word start
        ctx_len = rng.randint(CTX_MIN, CTX_MAX)
        end = text.rfind(" ", start, start + ctx_len + 1)  # context ends right before a space
        if end <= start or end - start < CTX_MIN:
            continue
        cont_end = end
        nxt = end
        while True:
            nxt2 = text.find(" ", nxt + 1)
            nxt2 = len(text) if nxt2 < 0 else nxt2
            if nxt2 - end > CONT_MAX:
                break
            nxt = cont_end = nxt2
            if cont_end - end >= CONT_MIN or nxt2 == len(text):
                break
        ctx, cont = text[start:end], text[end:cont_end]
        if not (CONT_MIN <= len(cont) <= CONT_MAX) or not (ctx + cont).isascii() or "\n" in cont:
            continue
        out.append({"doc_id": doc["id"], "context": ctx, "continuation": cont})
    return out


def build(data_dir: Path, n_items: int = 96, seed: int = 0) -> list[dict]:
    """Sample items across held-out documents (round-robin, seeded) and write JSONL + fingerprint."""
    train_hashes = np.unique(np.concatenate([shingle_hashes(d["text"]) for d in read_split(data_dir, "train")]))
    rng = random.Random(seed)
    docs = read_split(data_dir, "heldout")
    pools = [candidate_items(d, rng, 12) for d in docs]
    items: list[dict] = []
    seen: set[str] = set()
    while len(items) < n_items and any(pools):
        for pool in pools:
            while pool and len(items) < n_items:
                it = pool.pop(0)
                h = shingle_hashes(it["context"] + it["continuation"])
                if it["context"] in seen or np.isin(h, train_hashes).any() or sampled(h).size == 0:
                    continue
                seen.add(it["context"])
                items.append(it)
                break
    for i, it in enumerate(items):
        it["id"] = i
    TASK_DIR.mkdir(parents=True, exist_ok=True)
    with (TASK_DIR / "reference_heldout.jsonl").open("w") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")
    ASSETS_DIR.mkdir(parents=True, exist_ok=True)
    np.save(ASSETS_DIR / "train_shingles.npy", np.sort(sampled(train_hashes)))
    return items


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="build the reference_heldout task")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--n-items", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    items = build(args.data, args.n_items, args.seed)
    print(f"{len(items)} items from {len({it['doc_id'] for it in items})} held-out documents")


if __name__ == "__main__":
    main()
