"""Build the ``reference_heldout`` quality task and the training-split fingerprint shipped with it.

Items are (context -> continuation) pairs cut at word boundaries from *held-out* documents only: a context of
256..384 bytes ending at the end of a word and a continuation of 16..32 bytes that starts with the space before
the next word. A candidate is rejected when any of its 12-word shingles occurs anywhere in the training split
(full check at build time), so duplicated boilerplate between documents cannot leak training text into the task.

For the test-time check without shipping the 6 MB training text, ``train_shingles.npy`` holds the sorted 32-bit
hashes of the training 12-word shingles whose hash is 0 mod 8 (content-defined sampling: a shingle is sampled in
the task iff it is sampled in training, so any shared sampled shingle reveals overlap).

``reference_heldout_mc`` (4-choice, ``build_mc``): a held-out document cut before a word; the context is the
preceding 128..192 bytes, the choices are the true next word and three words of *other* held-out documents with
the same byte length and first-letter case (so length gives nothing away). Contexts pass the same shingle check.
A next-*sentence* version (true sentence vs length-matched sentences of other documents) scored chance with this
model, which cannot copy from its context; docs/reference_model.md has the numbers.

Usage: ``python -m tor_exp.reference.make_task --data /tmp/refdata [--task all|heldout|mc]``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import zlib
from pathlib import Path

import numpy as np

from tor_exp.reference import ASSETS_DIR, TASK_DIR
from tor_exp.reference.data import read_split

SHINGLE_WORDS = 12
SAMPLE_MOD = 8
CTX_MIN, CTX_MAX = 256, 384
CONT_MIN, CONT_MAX = 16, 32


MC_CTX_MIN, MC_CTX_MAX = 128, 192
MC_WORD = re.compile(r"(?<= )[A-Za-z]{3,14}(?![\w@$])")  # a word after a space, not part of an identifier
MC_N_CHOICES = 4
MC_MIN_GAP = 48  # bytes between the cut points of two items of one document


def shingle_hashes(text: str, k: int = SHINGLE_WORDS) -> np.ndarray:
    """crc32 of every k-word window (words = whitespace-split tokens joined by one space), as uint32."""
    words = text.split()
    if len(words) < k:
        return np.zeros(0, dtype=np.uint32)
    return np.array([zlib.crc32(" ".join(words[i:i + k]).encode()) for i in range(len(words) - k + 1)],
                    dtype=np.uint32)


def in_sorted(h: np.ndarray, sorted_hashes: np.ndarray) -> np.ndarray:
    """Membership of each hash in a sorted array (binary search: np.isin would re-sort 1 M hashes per call)."""
    i = np.searchsorted(sorted_hashes, h).clip(max=max(0, sorted_hashes.size - 1))
    return sorted_hashes[i] == h if sorted_hashes.size else np.zeros(h.shape, dtype=bool)


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


def mc_context(text: str, start: int) -> str | None:
    """The <= MC_CTX_MAX bytes before ``start``, beginning at a word start; None when shorter than MC_CTX_MIN."""
    lo = max(0, start - MC_CTX_MAX)
    ctx = text[lo:start]
    if lo > 0 and not text[lo - 1].isspace():  # cut inside a word: begin at the next word
        cut = re.search(r"\s+", ctx)
        ctx = ctx[cut.end():] if cut else ""
    ctx = ctx.lstrip()
    return ctx if len(ctx.encode("utf-8")) >= MC_CTX_MIN and not ctx[-1].isspace() else None


def word_shape(word: str) -> tuple[int, bool]:
    """What a distractor must share with the true word: byte length and an upper-case first letter."""
    return len(word), word[0].isupper()


def build_mc(data_dir: Path, n_items: int = 1200, seed: int = 0, train_hashes: np.ndarray | None = None,
             distractors: str = "type", out: Path | None = None) -> list[dict]:
    """Sample ``reference_heldout_mc`` items (seeded) and write them to ``out`` (default: the shipped task JSONL).

    An item cuts a held-out document before a word: the context is the preceding 128..192 bytes, the choices are
    " " + the true word and " " + three distinct words (types) that occur in *other* held-out documents and never in
    this one, drawn uniformly among the words with the same byte length and the same capitalisation of the first
    letter. All four choices have the same length, so length gives nothing away (acc equals acc_norm). Word
    frequency gives much away: distractors are uniform over types (mostly rare words), true words follow running
    text, and the shipped model without context picks the true word 58 % of the time, 78 % with it
    (docs/reference_model.md).
    ``distractors="occurrence"`` draws them by occurrence instead (any word of another document, so they follow the
    same frequency distribution as the true words): the model without context is then at chance, and with its
    context the phase-1 weights scored 0.43 (300 items), below the 0.6 the task is meant to clear.
    """
    if distractors not in ("type", "occurrence"):
        raise ValueError(f"distractors={distractors!r}: must be 'type' or 'occurrence'")
    if train_hashes is None:
        train_hashes = np.unique(np.concatenate([shingle_hashes(d["text"]) for d in read_split(data_dir, "train")]))
    docs = read_split(data_dir, "heldout")
    doc_words = {d["id"]: {m.group().lower() for m in MC_WORD.finditer(d["text"])} for d in docs}
    types: dict[tuple[int, bool], dict[str, tuple[str, str]]] = {}  # shape -> lower-case word -> (word, 1st doc)
    for d in docs:
        for m in MC_WORD.finditer(d["text"]):
            types.setdefault(word_shape(m.group()), {}).setdefault(m.group().lower(), (m.group(), d["id"]))
    pools = {shape: sorted(ws.items()) for shape, ws in types.items()}
    occurrences: dict[tuple[int, bool], list[tuple[str, str]]] = {}  # shape -> every (word, doc id)
    for d in docs:
        for m in MC_WORD.finditer(d["text"]):
            occurrences.setdefault(word_shape(m.group()), []).append((m.group(), d["id"]))
    rng = random.Random(seed)
    cuts = [(d["id"], d["text"], m.start(), m.group()) for d in docs for m in MC_WORD.finditer(d["text"])]
    rng.shuffle(cuts)
    taken: dict[str, list[int]] = {}
    items: list[dict] = []
    for doc_id, text, pos, word in cuts:
        if len(items) >= n_items:
            break
        if any(abs(pos - q) < MC_MIN_GAP for q in taken.get(doc_id, [])):
            continue
        ctx = mc_context(text, pos - 1)  # the space before the word belongs to the choice
        if ctx is None:
            continue
        h = shingle_hashes(ctx + " " + word)
        if in_sorted(h, train_hashes).any() or sampled(h).size == 0:
            continue  # sampled(h) non-empty: the shipped fingerprint can re-check this item
        if distractors == "type":
            pool = [v for k, v in pools[word_shape(word)] if k not in doc_words[doc_id]]
            picked = rng.sample(pool, MC_N_CHOICES - 1) if len(pool) >= MC_N_CHOICES - 1 else []
        else:
            pool, picked, seen = occurrences[word_shape(word)], [], {word.lower()}
            for _ in range(200):  # rejection sampling by occurrence; gives up on rare shapes
                w, did = pool[rng.randrange(len(pool))]
                if did != doc_id and w.lower() not in seen:
                    seen.add(w.lower())
                    picked.append((w, did))
                    if len(picked) == MC_N_CHOICES - 1:
                        break
        if len(picked) < MC_N_CHOICES - 1:
            continue
        taken.setdefault(doc_id, []).append(pos)
        options = [(word, doc_id)] + picked
        order = list(range(MC_N_CHOICES))
        rng.shuffle(order)
        items.append({"id": len(items), "doc_id": doc_id, "context": ctx,
                      "choices": [" " + options[k][0] for k in order],
                      "choice_doc_ids": [options[k][1] for k in order], "label": order.index(0)})
    out = TASK_DIR / "reference_heldout_mc.jsonl" if out is None else out
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")
    return items


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="build the reference_heldout and reference_heldout_mc tasks")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--n-items", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--task", choices=("all", "heldout", "mc"), default="all")
    ap.add_argument("--mc-items", type=int, default=1200)
    ap.add_argument("--mc-distractors", choices=("type", "occurrence"), default="type",
                    help="draw distractor words uniformly over distinct words, or by occurrence (see build_mc)")
    args = ap.parse_args(argv)
    if args.task in ("all", "heldout"):
        items = build(args.data, args.n_items, args.seed)
        print(f"reference_heldout: {len(items)} items from {len({it['doc_id'] for it in items})} held-out documents")
    if args.task in ("all", "mc"):
        items = build_mc(args.data, args.mc_items, args.seed, distractors=args.mc_distractors)
        print(f"reference_heldout_mc: {len(items)} items from {len({it['doc_id'] for it in items})} held-out "
              f"documents")


if __name__ == "__main__":
    main()
