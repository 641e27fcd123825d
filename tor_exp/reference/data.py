"""Reproducible corpus preparation for the reference model.

Source: the Debian package ``python3.11-doc`` (reST sources of the CPython 3.11 documentation, PSF License
Agreement; code examples also 0BSD). It is fetched offline-from-hubs via ``apt-get download`` (an ordinary
package registry), unpacked with ``dpkg -x``, and reduced to English prose paragraphs: code blocks,
directives, tables and markup are dropped so a byte-level model learns prose, not reST syntax.

Splits are by *document* (one reST file = one document) and deterministic (md5 of the relative path), so
held-out documents are never seen in training:
``heldout`` (md5 % 20 == 0, ~5 %), ``calib`` (md5 % 20 == 1, ~5 %, for calibrating reduction methods such as
LTMP), ``train`` (the rest).

Usage: ``python -m tor_exp.reference.data --out /tmp/refdata`` (or ``--deb path/to/python3.11-doc.deb``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import tempfile
import textwrap
from pathlib import Path

PACKAGE = "python3.11-doc"
SOURCES_SUBDIR = "usr/share/doc/python3.11/html/_sources"
LICENCE = (
    "PSF License Agreement (Python 3.11 documentation, Copyright 2001-2023 Python Software Foundation); "
    "code examples in the documentation are also under the Zero-Clause BSD licence"
)
# Changelog-like files are bullet lists of issue numbers, not prose.
EXCLUDE = ("whatsnew/changelog.rst.txt", "license.rst.txt", "copyright.rst.txt", "contents.rst.txt")

_ADORNMENT = re.compile(r"^\s*([=\-~^\"'`#*+<>:._])\1{2,}\s*$")
_ROLE = re.compile(r":[\w:.+-]+:`([^`]*)`")
_LINK = re.compile(r"`([^`<]*?)\s*<[^`>]*>`__?")
_LITERAL = re.compile(r"``([^`]*)``")
_INTERP = re.compile(r"`([^`]*)`_{0,2}")
_STRONG = re.compile(r"\*\*([^*]+)\*\*")
_EMPH = re.compile(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])")
_SUBST = re.compile(r"\|(\w+)\|")


def _role_text(m: re.Match[str]) -> str:
    """`:func:`text <target>`` -> text, `:meth:`~a.b.c`` -> c, `:func:`!x`` -> x."""
    inner = m.group(1)
    link = re.match(r"(.*?)\s*<[^>]*>$", inner)
    if link and link.group(1):
        return link.group(1)
    inner = inner.lstrip("!")
    if inner.startswith("~"):
        return inner[1:].split(".")[-1]
    return inner


def strip_inline(text: str) -> str:
    """Remove reST inline markup, keeping the visible words."""
    text = _ROLE.sub(_role_text, text)
    text = _LINK.sub(lambda m: m.group(1), text)
    text = _LITERAL.sub(lambda m: m.group(1), text)
    text = _INTERP.sub(lambda m: m.group(1), text)
    text = _STRONG.sub(lambda m: m.group(1), text)
    text = _EMPH.sub(lambda m: m.group(1), text)
    text = _SUBST.sub(lambda m: m.group(1), text)
    text = text.replace("\\", "")
    return re.sub(r"[ \t]+", " ", text).strip()


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_prose(par: str) -> bool:
    """Heuristic: mostly letters/spaces, a few words, no interpreter prompts or table borders."""
    if len(par) < 30 or ">>>" in par or "+--" in par or "===" in par or "|" in par[:2]:
        return False
    letters = sum(c.isalpha() or c == " " for c in par)
    return letters / len(par) >= 0.8 and len(par.split()) >= 6


def clean_rst(source: str) -> str:
    """Turn one reST document into prose paragraphs separated by blank lines.

    Blocks are blank-line separated. A block is dropped when it is a directive/comment (``.. ``), a literal
    block (indented deeper than a preceding paragraph ending in ``::``), a list/field/table line, or not
    prose-like. Kept blocks are dedented, unwrapped into one line and stripped of inline markup.
    """
    blocks: list[list[str]] = []
    cur: list[str] = []
    for line in source.splitlines():
        if line.strip():
            cur.append(line.rstrip())
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)

    out: list[str] = []
    literal_indent: int | None = None  # blocks indented deeper than this are literal (code)
    directive_indent: int | None = None  # directive bodies: keep prose, drop option lines
    for block in blocks:
        ind = _indent(block[0])
        if literal_indent is not None:
            if ind > literal_indent:
                continue
            literal_indent = None
        if directive_indent is not None and ind <= directive_indent:
            directive_indent = None
        first = block[0].strip()
        ends_literal = block[-1].rstrip().endswith("::")
        if first.startswith(".."):
            # code-ish directives open literal content; others (note, function, ...) hold prose bodies
            if re.match(r"\.\.\s+(code-block|code|sourcecode|productionlist|doctest|testcode|testoutput|"
                        r"literalinclude|highlight|csv-table|list-table|table|toctree|raw|only|include|image)",
                        first) or first.startswith(".. _") or re.match(r"\.\.\s*$", first) or "::" not in first:
                literal_indent = ind
            else:
                directive_indent = ind
            continue
        lines = [ln for ln in block if not _ADORNMENT.match(ln)]
        lines = [ln for ln in lines if not re.match(r"^\s*:[\w -]+:(\s|$)", ln)]  # field lists / options
        if not lines:
            continue
        par = strip_inline(" ".join(textwrap.dedent("\n".join(lines)).split("\n")))
        par = re.sub(r"^([-*+]|\d+\.|#\.)\s+", "", par)  # list bullets
        if ends_literal:
            literal_indent = ind
            par = re.sub(r"\s*::$", ":", par)
            if par.endswith(" :"):
                par = par[:-2] + ":"
        if _is_prose(par):
            out.append(par)
    return "\n\n".join(out)


def split_of(relpath: str) -> str:
    """Deterministic document split from the md5 of the relative path (never depends on file order)."""
    h = int(hashlib.md5(relpath.encode()).hexdigest(), 16) % 20
    return "heldout" if h == 0 else "calib" if h == 1 else "train"


def fetch_deb(workdir: Path) -> Path:
    """Download the package with ``apt-get download`` (the Debian package registry, no dataset hub)."""
    subprocess.run(["apt-get", "download", PACKAGE], cwd=workdir, check=True, capture_output=True)
    debs = sorted(workdir.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise FileNotFoundError(f"apt-get download {PACKAGE} produced no .deb in {workdir}")
    return debs[-1]


def prepare(out: Path, deb: Path | None = None) -> dict:
    """Build ``train.jsonl``, ``calib.jsonl``, ``heldout.jsonl`` and ``meta.json`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        deb = deb or fetch_deb(tmpd)
        sha = hashlib.sha256(deb.read_bytes()).hexdigest()
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                                 text=True).stdout.strip()
        subprocess.run(["dpkg", "-x", str(deb), str(tmpd / "x")], check=True)
        root = tmpd / "x" / SOURCES_SUBDIR
        files = sorted(p for p in root.rglob("*.rst.txt") if p.relative_to(root).as_posix() not in EXCLUDE)
        handles = {s: (out / f"{s}.jsonl").open("w", encoding="utf-8") for s in ("train", "calib", "heldout")}
        stats = {s: {"docs": 0, "bytes": 0} for s in handles}
        try:
            for p in files:
                rel = p.relative_to(root).as_posix()
                text = clean_rst(p.read_text(encoding="utf-8", errors="replace"))
                if len(text) < 200:
                    continue
                s = split_of(rel)
                handles[s].write(json.dumps({"id": rel, "text": text}, ensure_ascii=False) + "\n")
                stats[s]["docs"] += 1
                stats[s]["bytes"] += len(text.encode("utf-8"))
        finally:
            for h in handles.values():
                h.close()
    meta = {"package": PACKAGE, "version": version, "deb_sha256": sha, "licence": LICENCE,
            "source_dir": SOURCES_SUBDIR, "excluded": list(EXCLUDE), "splits": stats}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def read_split(data_dir: Path, split: str) -> list[dict]:
    """Documents of one split as ``[{"id", "text"}]``."""
    with (Path(data_dir) / f"{split}.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder for the split JSONL files")
    ap.add_argument("--deb", type=Path, default=None, help="use this .deb instead of apt-get download")
    args = ap.parse_args(argv)
    print(json.dumps(prepare(args.out, args.deb), indent=2))


if __name__ == "__main__":
    main()
