"""Text of the demo model, extracted from installed Debian packages (tools/demo/deps.sh).

english: fortunes + fortunes-min (BSD-licensed fortune-mod data files, no offensive ones)
german:  fortunes-de (GPL-2+)
kjv:     bible-kjv-text through the `bible` program of bible-kjv (KJV text: public domain)

Every source is a list of documents in a fixed order (package file list, sorted; file
order). Documents whose index % HELDOUT_EVERY == HELDOUT_AT are held out: never seen by the
tokenizer trainer or by any training run.
"""
import os
import re
import subprocess

FORTUNE_DIR = "/usr/share/games/fortunes"
SKIP = {"ascii-art", "translate-me", "asciiart"}   # pictures, not text
HELDOUT_EVERY = 40
HELDOUT_AT = 7
MAX_CHARS = 800          # longer entries are mostly lists and poems; not worth the tokens


def package_files(pkg, under):
    out = subprocess.run(["dpkg", "-L", pkg], check=True, capture_output=True, text=True).stdout
    files = []
    for p in out.split("\n"):
        if not p.startswith(under + "/"):
            continue
        name = os.path.basename(p)
        if "/" in p[len(under) + 1:] or "." in name or name in SKIP or not os.path.isfile(p):
            continue
        files.append(p)
    return sorted(files)


def clean(entry):
    """One fortune: tabs and runs of spaces → one space, lines stripped, blank lines dropped."""
    lines = []
    for line in entry.replace("\t", " ").split("\n"):
        line = re.sub(r" {2,}", " ", line).strip()
        if line:
            lines.append(line)
    return "\n".join(lines)


def textlike(s):
    """Mostly letters and spaces (rejects ASCII art, tables, code dumps)."""
    if not s:
        return False
    good = sum(1 for c in s if c.isalpha() or c in " \n.,;:'!?-\"")
    return good >= 0.85 * len(s)


def fortunes(pkgs, under):
    docs = []
    for pkg in pkgs:
        for path in package_files(pkg, under):
            with open(path, "rb") as f:
                raw = f.read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            for entry in re.split(r"\n%\n", "\n" + text + "\n"):
                e = clean(entry.strip("%"))
                if textlike(e) and len(e) <= MAX_CHARS:
                    docs.append(e)
    return docs


def kjv(verses_per_doc=3):
    """The KJV, Genesis to Revelation, as documents of a few consecutive verses."""
    out = subprocess.run(["bible", "-l100000", "gen1:1-rev22:21"], check=True,
                         capture_output=True, text=True).stdout
    docs, cur = [], []
    for line in out.split("\n"):
        m = re.match(r"^ +\d+ (.*)$", line)
        if m:
            cur.append(m.group(1).strip())
            if len(cur) == verses_per_doc:
                docs.append(" ".join(cur))
                cur = []
        elif line.strip():           # a chapter heading: documents never cross chapters
            if cur:
                docs.append(" ".join(cur))
            cur = []
    if cur:
        docs.append(" ".join(cur))
    return docs


def split(docs):
    train = [d for i, d in enumerate(docs) if i % HELDOUT_EVERY != HELDOUT_AT]
    held = [d for i, d in enumerate(docs) if i % HELDOUT_EVERY == HELDOUT_AT]
    return train, held


def load():
    """{"english"|"german"|"kjv": (train docs, held-out docs)}"""
    return {
        "english": split(fortunes(["fortunes", "fortunes-min"], FORTUNE_DIR)),
        "german": split(fortunes(["fortunes-de"], FORTUNE_DIR + "/de")),
        "kjv": split(kjv()),
    }


if __name__ == "__main__":
    for k, (tr, ho) in load().items():
        print(k, len(tr), len(ho), sum(map(len, tr)), "chars")
