"""Tiny local copies of the MME, OCRBench and RealWorldQA datasets, made in code at test time.

Each is written where ``datasets.load_dataset`` looks for a local copy of the hub dataset that
lmms-eval's task names (``dataset_path`` in the task YAML): a folder at the hub path, relative
to the working directory, holding ``data/test-00000-of-00001.parquet``. The columns and their
types are those of the real datasets, so lmms-eval's own task code (prompts, answer parsing,
metrics) runs unchanged. The images are real photographs from scikit-image.
"""

from __future__ import annotations

from pathlib import Path

#: lmms-eval task -> the hub dataset its YAML reads (lmms-eval 0.7.3).
HUB_PATHS = {
    "mme": "lmms-lab-encoder/MME",
    "ocrbench": "echo840/OCRBench",
    "realworldqa": "lmms-lab-encoder/RealWorldQA",
}


def _photo(name: str, size: tuple[int, int]):
    from gswa_plugin.testing.tiny import sample_image

    return sample_image(name).resize(size)


def _write(root: Path, task: str, columns: dict, features) -> Path:
    import datasets

    folder = root / HUB_PATHS[task] / "data"
    folder.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    target = folder / "test-00000-of-00001.parquet"
    ds.to_parquet(str(target))
    return target


def write_task_data(root: str | Path) -> dict[str, Path]:
    """Write the three tiny datasets under ``root``; returns task -> parquet file."""
    import datasets

    root = Path(root)
    s, img = datasets.Value("string"), datasets.Image()
    coffee, cat, page = _photo("coffee", (180, 120)), _photo("chelsea", (150, 100)), _photo("page", (200, 120))
    out = {}
    # MME: two yes/no questions per image (same question_id), perception and cognition categories
    out["mme"] = _write(
        root,
        "mme",
        {
            "question_id": ["coffee.jpg", "coffee.jpg", "cat.jpg", "cat.jpg", "page.jpg", "page.jpg"],
            "image": [coffee, coffee, cat, cat, page, page],
            "question": [
                "Is there a cup in this image? Please answer yes or no.",
                "Is there a cat in this image? Please answer yes or no.",
                "Is there a cat in this image? Please answer yes or no.",
                "Is the cat blue? Please answer yes or no.",
                "Is the text in this image about astronomy? Please answer yes or no.",
                "Is this a photo of a beach? Please answer yes or no.",
            ],
            "answer": ["Yes", "No", "Yes", "No", "No", "No"],
            "category": ["existence", "existence", "color", "color", "commonsense_reasoning", "commonsense_reasoning"],
        },
        {"question_id": s, "image": img, "question": s, "answer": s, "category": s},
    )
    # OCRBench: answers are lists of accepted strings
    out["ocrbench"] = _write(
        root,
        "ocrbench",
        {
            "dataset": ["IIIT5K", "docVQA", "ESTVQA"],
            "question": ["what is written in the image?", "What is the first word of the page?", "what is on the cup?"],
            "question_type": ["Regular Text Recognition", "Doc-oriented VQA", "Scene Text-centric VQA"],
            "answer": [["page"], ["the"], ["coffee"]],
            "image": [page, page, coffee],
        },
        {"dataset": s, "question": s, "question_type": s, "answer": datasets.Sequence(s), "image": img},
    )
    # RealWorldQA: multiple choice with the letter as answer, and one open answer
    out["realworldqa"] = _write(
        root,
        "realworldqa",
        {
            "image": [coffee, cat, page],
            "question": [
                "What is in the cup?\nA. Coffee\nB. Water\nC. Sand\nPlease answer directly with only the letter of the correct option and nothing else.",
                "Which animal is shown?\nA. Dog\nB. Cat\nC. Horse\nPlease answer directly with only the letter of the correct option and nothing else.",
                "How many pages are shown? Please answer directly with a single word or number.",
            ],
            "answer": ["A", "B", "1"],
        },
        {"image": img, "question": s, "answer": s},
    )
    return out
