"""Text for harvesting activations: a default English corpus that is always available offline,
loaders for users' corpora, and packing into fixed-length token contexts.

The default corpus is the docstrings of Python's standard library: every Python install has
them (no download), they are written English prose by many authors about many topics, and they
are read straight from the source files, so the same Python version gives the same corpus.
They lean technical; for a model's general behaviour, load your own corpus.
"""

from __future__ import annotations

import ast
import functools
import json
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from mechscope.errors import FileFormatError, InputTypeError, MechscopeError, MissingFileError
from mechscope.validate import check_int

MIN_CHARS = 200  # shorter docstrings are mostly signatures and one-liners


def stdlib_docstrings(min_chars: int = MIN_CHARS, limit: int | None = None,
                      packages: tuple[str, ...] = ()) -> list[str]:
    """Module, class and function docstrings of the standard library (and of the installed
    ``packages``, e.g. ("torch", "transformers"), for more text), prose-like ones only (at
    least ``min_chars`` characters, mostly letters), deduplicated, in a fixed order. The
    standard library alone gives about 2,200 docstrings, ~300k SmolLM2 tokens. Parsed once per
    process (about 9 s on 2 cores)."""
    check_int("min_chars", min_chars, 0)
    if limit is not None:
        check_int("limit", limit, 1)  # 0 would still return one docstring
    if isinstance(packages, str) or not all(isinstance(package, str) for package in packages):
        raise InputTypeError(f"packages must be a tuple of package names, e.g. ('torch',); got {packages!r}")
    return list(_docstrings(min_chars, limit, tuple(packages)))


@functools.lru_cache(maxsize=4)
def _docstrings(min_chars: int, limit: int | None, packages: tuple[str, ...]) -> tuple[str, ...]:
    import importlib.util

    roots = [Path(sysconfig.get_paths()["stdlib"])]
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise MechscopeError(f"package {package!r} is not installed (or is not a package)")
        roots.extend(Path(location) for location in spec.submodule_search_locations)
    seen: set[str] = set()
    texts: list[str] = []
    files = [(root, path) for root in roots for path in sorted(root.rglob("*.py"))]
    for root, path in files:
        if any(part in ("test", "tests", "idle_test", "site-packages") for part in path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            text = ast.get_docstring(node)
            if not text or len(text) < min_chars or text in seen:
                continue
            letters = sum(ch.isalpha() or ch.isspace() for ch in text) / len(text)
            if letters < 0.85:
                continue
            seen.add(text)
            texts.append(text)
            if limit is not None and len(texts) >= limit:
                return tuple(texts)
    return tuple(texts)


def load_texts(source: str | Path, field: str = "text", split: str = "train") -> list[str]:
    """Texts from a .txt/.md file (one document), a folder of them, a .jsonl file (``field`` of
    each line), a .parquet file (``field`` column; needs pyarrow), a ``datasets`` dataset
    saved with save_to_disk (``split`` of a DatasetDict), or, for a name that is no local path
    ("user/name"), a dataset from the HuggingFace hub when it is reachable."""
    path = Path(source).expanduser()
    if path.is_dir() and any((path / name).exists() for name in ("dataset_info.json", "dataset_dict.json")):
        return _from_datasets(path, field, split)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md", ".rst"))
        if not files:
            raise MechscopeError(f"no .txt, .md or .rst files under {path}")
        return [p.read_text(encoding="utf-8", errors="replace") for p in files]
    if not path.exists() and _looks_like_hub_id(str(source)):
        return _from_hub(str(source), field, split)
    if not path.is_file():
        raise MissingFileError(f"corpus source not found: {path}")
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise FileFormatError(f"{path}:{number} is not valid JSON ({error}): fix or delete that line"
                                          ) from error
                if not isinstance(record, dict):
                    raise FileFormatError(f"{path}:{number} must be a JSON object with a {field!r} field; got "
                                          f"{type(record).__name__}")
                if field not in record:
                    raise MechscopeError(f"{path}:{number} has no field {field!r}; its fields: {', '.join(record)}")
                texts.append(str(record[field]))
        return texts
    if path.suffix == ".parquet":
        try:
            from pyarrow import parquet
        except ImportError as error:
            raise ImportError("reading parquet needs pyarrow: pip install pyarrow") from error
        table = parquet.read_table(path)
        if field not in table.column_names:
            raise MechscopeError(f"{path} has no column {field!r}; columns: {', '.join(table.column_names)}")
        return [str(x) for x in table.column(field).to_pylist()]
    if path.suffix in (".txt", ".md", ".rst"):
        return [path.read_text(encoding="utf-8", errors="replace")]
    raise MechscopeError(f"unsupported corpus file {path.name!r}: use .txt, .md, .rst, .jsonl, .parquet, a folder, "
                     "or a datasets folder")


def _looks_like_hub_id(source: str) -> bool:
    """"name" or "user/name" without a file suffix: what the hub's dataset ids look like."""
    parts = source.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and Path(source).suffix == "" and not source.startswith((".", "~"))


def _datasets_module():
    try:
        import datasets
    except ImportError as error:
        raise ImportError("reading a datasets dataset needs the datasets package: pip install datasets") from error
    return datasets


def _column(dataset, field: str, source: str) -> list[str]:
    if field not in dataset.column_names:
        raise MechscopeError(f"{source} has no column {field!r}; columns: {', '.join(dataset.column_names)}")
    return [str(x) for x in dataset[field]]


def _from_datasets(path: Path, field: str, split: str) -> list[str]:
    dataset = _datasets_module().load_from_disk(str(path))
    if hasattr(dataset, "keys"):
        if split not in dataset:
            raise MechscopeError(f"split {split!r} not in the dataset; splits: {', '.join(dataset.keys())}")
        dataset = dataset[split]
    return _column(dataset, field, str(path))


def _from_hub(name: str, field: str, split: str) -> list[str]:
    datasets = _datasets_module()
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as error:  # offline, unknown name, no such split: all say the same to the user
        raise MissingFileError(f"{name!r} is no local file or folder, and loading it from the HuggingFace hub "
                                f"failed ({type(error).__name__}: {error})") from error
    return _column(dataset, field, name)


def pack(tokenizer, texts: Iterable[str], context_length: int, n_contexts: int | None = None,
         seed: int = 0) -> torch.Tensor:
    """[n_contexts, context_length] token ids: texts (shuffled with ``seed``) tokenised without
    special tokens, joined by EOS, cut into contexts of context_length - 1 tokens, each with BOS
    in front. Deterministic given the texts and the seed; the last partial context is dropped."""
    check_int("context_length", context_length, 2)
    if n_contexts is not None:
        check_int("n_contexts", n_contexts, 1)
    check_int("seed", seed, None)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else bos
    if bos is None:
        raise MechscopeError("the tokenizer has neither a BOS nor an EOS token to start contexts with")
    if isinstance(texts, str):  # iterating would pack it character by character
        raise InputTypeError("texts must be a list of strings; got one string (wrap it in a list)")
    texts = list(texts)
    bad = next((index for index, text in enumerate(texts) if not isinstance(text, str)), None)
    if bad is not None:
        raise InputTypeError(f"texts[{bad}] must be a string; got {type(texts[bad]).__name__}")
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    width = context_length - 1
    contexts: list[list[int]] = []
    buffer: list[int] = []
    for ids in _token_stream(tokenizer, (texts[i] for i in order), eos):
        buffer.extend(ids)
        while len(buffer) >= width:
            contexts.append([bos] + buffer[:width])
            buffer = buffer[width:]
            if n_contexts is not None and len(contexts) >= n_contexts:
                return torch.tensor(contexts)
    if not contexts:
        raise MechscopeError(f"the texts hold fewer than {width} tokens: not one context of length {context_length}")
    return torch.tensor(contexts)


def _token_stream(tokenizer, texts: Iterator[str], eos: int) -> Iterator[list[int]]:
    for text in texts:
        yield tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
