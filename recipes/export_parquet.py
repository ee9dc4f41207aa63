"""Export hub datasets stored as parquet (image + LLaVA conversations) to images and LLaVA JSONL.

The instruction sets the recipes draw on are published on the Hugging Face hub as parquet
shards whose rows hold the image itself: ``lmms-lab/LLaVA-OneVision-Data`` (one folder per
subset, e.g. ``chartqa(cauldron,llava_format)``, ``infographic_vqa``; features ``id``,
``image``, ``conversations`` = ``[{from, value}]``, ``data_source``, as its dataset card lists)
and ``lmms-lab/LLaVA-NeXT-Data`` (``data/*.parquet``). The trainers read LLaVA-format JSON with
image files, so this script writes each row's image to ``OUT/images/`` and the record to
``OUT/train_llava.jsonl`` (image paths relative to ``OUT``), reading the shards in batches so
memory stays flat::

    python recipes/export_parquet.py --out /data/chartqa "/data/ov/chartqa(cauldron,llava_format)"/*.parquet
    python recipes/internvl2-2b/transformers/prepare_data.py \\
        --source chartqa=/data/chartqa/train_llava.jsonl:/data/chartqa ...

Rows without an image are kept as text-only records (``prepare_data.py`` leaves them out unless
``--keep-text-only``). Needs ``pyarrow`` (``pip install pyarrow``; ``datasets`` depends on it).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

#: Columns read from each shard (``data_source`` and others are not needed).
COLUMNS = ("id", "image", "conversations")


def _image_bytes(cell: Any) -> tuple[bytes, str] | None:
    """(bytes, file suffix) of a ``datasets`` Image cell (a ``{bytes, path}`` struct), or None."""
    if not cell or not cell.get("bytes"):
        return None
    data = cell["bytes"]
    suffix = Path(cell.get("path") or "").suffix.lower()
    if suffix not in {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}:
        from PIL import Image

        fmt = (Image.open(io.BytesIO(data)).format or "png").lower()
        suffix = ".jpg" if fmt == "jpeg" else f".{fmt}"
    return data, suffix


def rows(shards: Sequence[Path], batch_size: int = 256) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``file:row``, row) over the shards, in order, ``batch_size`` rows in memory at a time."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise SystemExit("reading parquet needs pyarrow: pip install pyarrow") from exc
    for shard in shards:
        pf = pq.ParquetFile(shard)
        missing = [c for c in COLUMNS if c not in pf.schema_arrow.names]
        if missing:
            raise SystemExit(
                f"{shard}: no column(s) {', '.join(missing)} (found {', '.join(pf.schema_arrow.names)}); "
                "this script reads the LLaVA layout: id, image, conversations"
            )
        n = 0
        for batch in pf.iter_batches(batch_size=batch_size, columns=list(COLUMNS)):
            for row in batch.to_pylist():
                yield f"{shard.name}:{n}", row
                n += 1


def export(shards: Sequence[Path], out: Path, prefix: str = "") -> dict[str, int]:
    """Write ``out/images/*`` and ``out/train_llava.jsonl``; returns counts."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    counts = {"records": 0, "images": 0, "text-only": 0}
    with (out / "train_llava.jsonl").open("w", encoding="utf-8") as f:
        for i, (where, row) in enumerate(rows(shards)):
            conversations = row.get("conversations")
            if not conversations:
                raise SystemExit(f"{where}: no conversations")
            rec: dict[str, Any] = {"id": f"{prefix}{row.get('id') if row.get('id') is not None else i}"}
            img = _image_bytes(row.get("image"))
            if img is not None:
                rel = Path("images") / f"{i:08d}{img[1]}"
                (out / rel).write_bytes(img[0])
                rec["image"] = rel.as_posix()
                counts["images"] += 1
            else:
                counts["text-only"] += 1
            rec["conversations"] = [{"from": t["from"], "value": t["value"]} for t in conversations]
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            counts["records"] += 1
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", nargs="+", type=Path, help="parquet files (one subset's shards)")
    parser.add_argument("--out", type=Path, required=True, help="folder for images/ and train_llava.jsonl")
    parser.add_argument("--id-prefix", default="", help="prepended to every record id")
    args = parser.parse_args(argv)
    missing = [str(s) for s in args.shards if not s.is_file()]
    if missing:
        print(f"error: no such parquet file: {', '.join(missing)}", file=sys.stderr)
        return 2
    counts = export(args.shards, args.out, args.id_prefix)
    print(f"wrote {counts['records']} records ({counts['images']} images, {counts['text-only']} text-only) "
          f"to {args.out / 'train_llava.jsonl'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
