"""The jobs of a batch: one row per image, read from a CSV, a JSON-lines file or a folder of images.

    jobs.csv         id,image,subject,style,steps,seed,method
                     cat1,photos/cat1.jpg,cat,watercolor,,,
                     mug,photos/mug.png,cup,oil painting,800,3,
    jobs.jsonl       {"image": "photos/cat1.jpg", "subject": "cat", "style": "watercolor"}
    photos/          cat1.jpg + cat1.yaml ("subject: cat\\nstyle: watercolor"), mug.png + mug.json, ...

A column is `id` (the run folder's name; default: the image's file name without suffix),
`image` (relative paths are read from the jobs file's folder), `method`, `config` (a row's own
YAML config, replacing the batch's --config), any option of `unziplora decompose` by its flag
name (`steps`, `base-model` or `base_model`, `gradient-checkpointing`, ...) or any config key
(`train.steps`, `sample.seeds`). An empty cell leaves the batch's setting. A misspelt column or a
duplicate id stops the batch before any work; a bad value stops only its row (`Job.error`).
"""

from __future__ import annotations

import csv
import functools
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...config import RunConfig
from ...errors import UnZipLoRAError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
SIDECAR_SUFFIXES = (".yaml", ".yml", ".json", ".txt")
ROW_KEYS = ("id", "image", "method", "config")
# A run folder name: no path separators, no hidden names, none that decompose's work folder uses.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
# Values that are paths: relative ones are read from the jobs file's folder when they exist there.
_PATH_KEYS = ("model.base_model", "model.profile")
# Names the batch's own files take in OUT/ (state.py): never a row's run folder.
RESERVED_IDS = ("index.html",)


@dataclass(frozen=True)
class Job:
    """One row: its run folder name, its image and the settings it sets (dotted config keys)."""

    id: str
    image: Path | None
    where: str  # "jobs.csv line 4", for messages
    overrides: dict[str, Any] = field(default_factory=dict)
    method: str | None = None
    config: Path | None = None
    error: str | None = None  # a bad value in this row: the row fails with it, the others run

    @property
    def subject(self) -> str | None:
        return self.overrides.get("prompts.subject")

    @property
    def style(self) -> str | None:
        return self.overrides.get("prompts.style")


def decompose_aliases() -> dict[str, str]:
    """Column name -> config key for every option of `unziplora decompose` (its flag without `--`).

    Both come from the options declared in config.py (`user_options`), so that a column and a
    flag of the same name always mean the same setting.
    """
    from ...config import user_options

    return {opt.flag: opt.key for opt in user_options()}


@functools.lru_cache(maxsize=1)
def config_keys() -> dict[str, Any]:
    """Every dotted config key and its type annotation."""
    hints = typing.get_type_hints(RunConfig)
    return {f"{section}.{name}": annotation
            for section, cls in hints.items() for name, annotation in typing.get_type_hints(cls).items()}


def column_key(name: str, aliases: dict[str, str]) -> str | None:
    """The row key or config key a column names (None: unknown). `base_model`, `Base-Model` and
    `base-model` are one column; dotted names are config keys as spelt in the config file."""
    name = name.strip()
    if "." in name:
        return name if name in config_keys() else None
    norm = name.lower().replace("_", "-")
    if norm in ROW_KEYS:
        return norm
    return aliases.get(norm)


def _parse_value(text: str, annotation: Any, where: str) -> Any:
    """A CSV cell (text) as the type its config key holds; JSON values are checked the same way."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if type(None) in args:  # `int | None`: the inner type (an empty cell means unset, never None)
        annotation = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    try:
        if annotation is bool:
            lowered = text.strip().lower()
            if lowered in ("true", "yes", "1", "on"):
                return True
            if lowered in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if annotation is int:
            return int(text)
        if annotation is float:
            return float(text)
        if origin in (list, tuple):
            value = yaml.safe_load(text)
            if not isinstance(value, list):
                raise ValueError
            return value
    except (ValueError, yaml.YAMLError):
        kind = {bool: "true or false", int: "an integer", float: "a number"}.get(annotation, "a list such as [0, 1]")
        raise UnZipLoRAError(f"{where} must be {kind}, got {text!r}") from None
    return text.strip()


def _make_job(values: dict[str, Any], where: str, base_dir: Path, aliases: dict[str, str]) -> Job:
    """A Job from one row's {column: value}; unknown columns were refused by the caller."""
    keys = config_keys()
    overrides: dict[str, Any] = {}
    row: dict[str, Any] = {}
    error = None
    for column, value in values.items():
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        key = column_key(column, aliases)
        try:
            if key in ROW_KEYS:
                row[key] = str(value).strip()
            elif isinstance(value, str):
                overrides[key] = _parse_value(value, keys[key], f"{where}: {column}")
            else:
                overrides[key] = value  # JSON/YAML values keep their type; RunConfig checks it
        except UnZipLoRAError as exc:
            error = error or str(exc)
    for key in _PATH_KEYS:
        local = base_dir / str(overrides.get(key, ""))
        if key in overrides and not Path(overrides[key]).is_absolute() and local.exists():
            overrides[key] = str(local.resolve())
    image = base_dir / Path(row["image"]).expanduser() if "image" in row else None
    if image is None:
        error = error or f"{where}: no image (fill its image column)"
    job_id = row.get("id") or (image.stem if image else None)
    if not job_id or not _ID.fullmatch(job_id) or job_id.endswith(".partial"):
        raise UnZipLoRAError(f"{where}: {job_id!r} cannot name a run folder: use letters, digits and . _ + - "
                             "(starting with a letter or digit, at most 100), e.g. fill its id column")
    if job_id.lower() in RESERVED_IDS:
        raise UnZipLoRAError(f"{where}: the id {job_id!r} is the name of the batch's own results page; "
                             "give the row another id")
    if "method" in row:
        from ...names import Method, choice_error

        if row["method"] not in {m.value for m in Method}:
            error = error or f"{where}: {choice_error('method', row['method'], Method)}"
    config = base_dir / row["config"] if "config" in row else None
    return Job(job_id, image, where, overrides, row.get("method"), config, error)


def _check_columns(columns, source: str, aliases: dict[str, str]) -> None:
    """Every column known, none empty, no two naming one setting (`steps` and `train.steps` too)."""
    if any(not str(c).strip() for c in columns):
        raise UnZipLoRAError(f"{source}: a column has no name; name every column of the first line")
    named: dict[str, str] = {}
    for column in columns:
        key = column_key(str(column), aliases)
        key = aliases.get(key, key) if key else key
        if key is not None and key in named:
            raise UnZipLoRAError(f"{source}: the columns {named[key]!r} and {str(column)!r} both set {key}; keep one")
        if key is not None:
            named[key] = str(column)
    unknown = [c for c in columns if column_key(str(c), aliases) is None]
    if unknown:
        raise UnZipLoRAError(f"{source}: unknown column {str(unknown[0])!r}; use {', '.join(ROW_KEYS)}, an option of "
                             f"decompose ({', '.join(sorted(aliases))}) or a config key such as train.steps")


def _undecodable_line(path: Path) -> int:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return raw[: exc.start].count(b"\n") + 1
    return 1


def _read_csv(path: Path, aliases: dict[str, str]) -> list[Job]:
    ended = 0  # the last line of the rows read so far
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, strict=True)
            columns = [c for c in (reader.fieldnames or [])]
            _check_columns(columns, f"{path.name} line 1", aliases)
            if not any(column_key(c, aliases) == "image" for c in columns if c):
                raise UnZipLoRAError(f"{path}: no image column; the first line names the columns, e.g. "
                                     "id,image,subject,style")
            jobs, ended = [], reader.line_num
            for row in reader:
                extra = row.pop(None, None)  # more cells than columns
                where = f"{path.name} line {ended + 1}"
                if reader.line_num > ended + 1:  # no value of a row holds a line break: a stray quote
                    raise UnZipLoRAError(f"{where}: a quoted cell runs on to line {reader.line_num}, swallowing the "
                                         "lines between; close the quote (or remove the stray \")")
                ended = reader.line_num
                if extra and any(str(v).strip() for v in extra):
                    raise UnZipLoRAError(f"{where} has more cells than the header has columns")
                if not any((v or "").strip() for v in row.values()):
                    continue  # a blank line
                jobs.append(_make_job({k: v for k, v in row.items() if k}, where, path.parent, aliases))
    except UnicodeDecodeError:
        raise UnZipLoRAError(f"{path.name} line {_undecodable_line(path)} is not UTF-8 text; "
                             "save it as CSV (UTF-8)") from None
    except csv.Error as exc:  # strict quoting: a stray quote is found where its cell ends
        raise UnZipLoRAError(f"{path.name} line {ended + 1} is not valid CSV ({exc}; a stray quote?)") from None
    return jobs


def _no_duplicate_keys(where: str):
    def pairs(items):
        seen = {}
        for key, value in items:
            if key in seen:
                raise UnZipLoRAError(f"{where}: the key {key!r} is given twice; keep one")
            seen[key] = value
        return seen

    return pairs


def _read_jsonl(path: Path, aliases: dict[str, str]) -> list[Job]:
    """One JSON object per line, read as strictly as the CSV: UTF-8 (a BOM allowed), no duplicate keys."""
    jobs = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UnZipLoRAError(f"{path.name} line {_undecodable_line(path)} is not UTF-8 text; "
                             "save the file as UTF-8") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            values = json.loads(line, object_pairs_hook=_no_duplicate_keys(where))
        except json.JSONDecodeError as exc:
            raise UnZipLoRAError(f"{where} is not valid JSON ({exc.msg}); one object per line") from None
        if not isinstance(values, dict):
            raise UnZipLoRAError(f"{where} must be a JSON object, e.g. "
                                 '{"image": "cat.png", "subject": "cat", "style": "watercolor"}')
        _check_columns(values, where, aliases)
        jobs.append(_make_job(values, where, path.parent, aliases))
    return jobs


def _read_folder(folder: Path, aliases: dict[str, str]) -> list[Job]:
    """Each image of `folder` with its sidecar (same name, .yaml/.yml/.json/.txt holding a mapping)."""
    jobs = []
    for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        values: dict[str, Any] = {}
        sidecars = [image.with_suffix(s) for s in SIDECAR_SUFFIXES if image.with_suffix(s).is_file()]
        if sidecars:
            try:
                values = yaml.safe_load(sidecars[0].read_text(encoding="utf-8")) or {}
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                raise UnZipLoRAError(f"sidecar {sidecars[0]} is not valid YAML/JSON: "
                                     f"{str(exc).splitlines()[0]}") from None
            if not isinstance(values, dict):
                raise UnZipLoRAError(f"sidecar {sidecars[0]} must hold a mapping such as 'subject: cat' and "
                                     "'style: watercolor' on two lines")
            _check_columns(values, str(sidecars[0].name), aliases)
            if "image" in values:
                raise UnZipLoRAError(f"sidecar {sidecars[0]} names an image; a sidecar belongs to the image beside it")
        jobs.append(_make_job({**values, "image": image.name}, image.name, folder, aliases))
    if not jobs:
        raise UnZipLoRAError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return jobs


def read_jobs(path: str | Path, aliases: dict[str, str] | None = None) -> list[Job]:
    """The jobs of a CSV, a JSON-lines file or a folder of images with sidecars, in file order.

    `aliases` maps column names to config keys (default: decompose's flags, `decompose_aliases`).
    Refused with one line, before any work: a missing file, an unknown column, an id that cannot
    name a folder, two rows with one id.
    """
    path = Path(path)
    aliases = decompose_aliases() if aliases is None else aliases
    if path.is_dir():
        jobs = _read_folder(path, aliases)
    elif not path.is_file():
        raise UnZipLoRAError(f"jobs file {path} does not exist; give a .csv, a .jsonl or a folder of images")
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        jobs = _read_jsonl(path, aliases)
    elif path.suffix.lower() == ".csv":
        jobs = _read_csv(path, aliases)
    else:
        raise UnZipLoRAError(f"{path}: jobs are read from a .csv, a .jsonl or a folder of images, not {path.suffix!r}")
    seen: dict[str, str] = {}
    for job in jobs:
        if job.id.lower() in seen:  # case-insensitive file systems would merge them
            raise UnZipLoRAError(f"{seen[job.id.lower()]} and {job.where} both have the id {job.id!r}: they would "
                                 "write the same run folder; give each row its own id")
        seen[job.id.lower()] = job.where
    if not jobs:
        raise UnZipLoRAError(f"{path} holds no rows")
    return jobs
