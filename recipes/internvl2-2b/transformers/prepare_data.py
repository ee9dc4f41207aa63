"""Build the SleighVL training mix as one JSONL file (LLaVA format, image paths resolved).

The paper trains on 602K samples but does not publish the mix. This script builds a mix of the
same size from public instruction data that you have downloaded (see README.md, "Data"): each
``--source NAME=FILE:IMAGE_ROOT[:COUNT]`` is a JSON/JSONL file in LLaVA (``conversations``) or
OpenAI (``messages``) format with its image folder. Every record is checked with the same code
the trainer uses (malformed records stop the run, naming file and line), image files are checked
(missing ones are counted and left out), text-only records are left out unless asked, then
``--total`` records are drawn (each source in proportion to its size, or its own ``COUNT``),
shuffled with ``--seed`` and written with absolute image paths, in LLaVA format (the transformers
recipes) or, with ``--format messages``, in the OpenAI-style ``messages`` format that lmms-engine's
datasets read (``image_url`` parts; the lmms-engine recipe); one JSON list instead of JSON Lines
when ``--out`` ends in ``.json`` (llava's training code reads a list).

Example (our default mix, see README.md)::

    python recipes/internvl2-2b/transformers/prepare_data.py \\
        --source llava665k=/data/llava/llava_v1_5_mix665k.json:/data/llava \\
        --total 602000 --seed 0 --out data/sleighvl_mix.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from gswa_plugin.errors import DataError
from gswa_plugin.integrations.transformers.data import IMAGE_PLACEHOLDER, Record, iter_raw_records, parse_record

_FROM = {"user": "human", "assistant": "gpt", "system": "system"}


def parse_source(spec: str) -> tuple[str, Path, Path, int | None]:
    """``NAME=FILE:IMAGE_ROOT[:COUNT]`` -> its parts."""
    if "=" not in spec:
        raise SystemExit(f"--source {spec!r} must look like NAME=FILE:IMAGE_ROOT[:COUNT]")
    name, rest = spec.split("=", 1)
    parts = rest.split(":")
    if len(parts) not in (2, 3):
        raise SystemExit(f"--source {spec!r} must look like NAME=FILE:IMAGE_ROOT[:COUNT]")
    count = int(parts[2]) if len(parts) == 3 else None
    return name, Path(parts[0]), Path(parts[1]), count


def to_llava(rec: Record, source: str) -> dict[str, Any]:
    """A checked record as a LLaVA-format dict with absolute image paths."""
    out: dict[str, Any] = {"id": f"{source}:{rec.id if rec.id is not None else rec.source}"}
    if rec.images:
        paths = [str(p.resolve()) for p in rec.images]
        # one image as a string: the original LLaVA code joins it to its image folder as a path
        out["image"] = paths[0] if len(paths) == 1 else paths
    out["conversations"] = [{"from": _FROM[t.role], "value": t.text} for t in rec.turns]
    return out


def to_messages(rec: Record, source: str) -> dict[str, Any]:
    """A checked record in lmms-engine's format: OpenAI-style ``messages`` whose content is a list of
    ``text`` and ``image_url`` parts (absolute paths), each image where its placeholder was; text
    parts stripped, as InternVL's preprocessing strips each turn."""
    images = iter(rec.images)
    messages = []
    for turn in rec.turns:
        pieces = turn.text.split(IMAGE_PLACEHOLDER)
        content: list[dict[str, Any]] = []
        for i, piece in enumerate(pieces):
            if i:
                content.append({"type": "image_url", "image_url": {"url": str(next(images).resolve())}})
            if piece.strip():
                content.append({"type": "text", "text": piece.strip()})
        messages.append({"role": turn.role, "content": content})
    return {"id": f"{source}:{rec.id if rec.id is not None else rec.source}", "messages": messages}


FORMATS = {"llava": to_llava, "messages": to_messages}


def read_source(
    name: str, path: Path, image_root: Path, keep_text_only: bool, stats: Counter, fmt: str = "llava"
) -> list[dict[str, Any]]:
    records = []
    for where, obj in tqdm(iter_raw_records(path), desc=f"checking {name}", unit=" records"):
        rec = parse_record(obj, where, image_root)
        if not rec.images and not keep_text_only:
            stats[f"{name}: text-only, left out"] += 1
            continue
        if any(not p.is_file() for p in rec.images):
            stats[f"{name}: missing image, left out"] += 1
            continue
        stats[f"{name}: usable"] += 1
        records.append(FORMATS[fmt](rec, name))
    return records


def draw(pools: dict[str, list[dict[str, Any]]], counts: dict[str, int | None], total: int | None, rng: random.Random) -> list[dict[str, Any]]:
    """Records drawn per source: its own count, else its share of ``total``, else all of it."""
    available = sum(len(p) for p in pools.values())
    fixed = sum(c for c in counts.values() if c is not None)
    free = {n: len(p) for n, p in pools.items() if counts[n] is None}
    budget = None if total is None else max(total - fixed, 0)
    out: list[dict[str, Any]] = []
    for name, pool in pools.items():
        want = counts[name]
        if want is None:
            want = len(pool) if budget is None else round(budget * len(pool) / max(sum(free.values()), 1))
        if want > len(pool):
            raise SystemExit(f"source {name} has {len(pool)} usable records, {want} were asked for")
        out.extend(rng.sample(pool, want) if want < len(pool) else list(pool))
    if total is not None and len(out) > total:
        out = rng.sample(out, total)
    if total is not None and len(out) < total:
        print(f"note: only {len(out)} of the {total} records asked for are available ({available} usable)", file=sys.stderr)
    rng.shuffle(out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", action="append", required=True, help="NAME=FILE:IMAGE_ROOT[:COUNT] (repeatable)")
    parser.add_argument("--total", type=int, default=None, help="records in the mix (paper: 602000); default: all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-text-only", action="store_true", help="keep records without images")
    parser.add_argument("--out", type=Path, required=True, help="output: JSON Lines, or one JSON list if it ends in .json")
    parser.add_argument(
        "--format", choices=sorted(FORMATS), default="llava",
        help="llava: `conversations` (transformers recipes); messages: OpenAI-style (lmms-engine recipes)",
    )
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    stats: Counter = Counter()
    pools: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, int | None] = {}
    try:
        for spec in args.source:
            name, path, root, count = parse_source(spec)
            pools[name] = read_source(name, path, root, args.keep_text_only, stats, args.format)
            counts[name] = count
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mix = draw(pools, counts, args.total, rng)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as f:
        if args.out.suffix == ".json":  # one JSON list, as llava's LazySupervisedDataset reads (json.load)
            json.dump(mix, f, ensure_ascii=False)
        else:
            for rec in tqdm(mix, desc=f"writing {args.out.name}", unit=" records"):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    by_source = Counter(r["id"].split(":", 1)[0] for r in mix)
    for key in sorted(stats):
        print(f"{key}: {stats[key]}")
    for name in pools:
        print(f"{name}: {by_source[name]} in the mix")
    images = sum(len([r["image"]] if isinstance(r.get("image"), str) else r.get("image", [])) for r in mix) + sum(
        part.get("type") == "image_url" for r in mix for m in r.get("messages", []) for part in m["content"]
    )
    kept = f", {IMAGE_PLACEHOLDER} placeholders kept" if args.format == "llava" else ""
    print(f"wrote {len(mix)} records ({images} images{kept}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
