"""`unziplora batch --eval`: each finished row scored, by the toy world's oracles or the paper's metrics.

Toy-world rows (the subject one of the world's classes, the style one of its fill families, the
image one of its renders) are scored as `unziplora bench quality` scores a run
(`bench.quality.score_run`): the content oracle on content-alone outputs against the input
(subject_alignment), the style oracle on style-alone outputs of another class (style_alignment),
both leakages, and the together outputs (combined). With metric models given, every row gets the
paper's metrics (arXiv 2412.04465, Sec. 4): DINO and CLIP-I of content-alone outputs against the
input (subject), CSD and CLIP-I of style-alone outputs (style), CLIP-T of the together outputs
against their prompt (text). Samples use the run's own sampling settings; the images scored are
kept in RUN/eval/, the scores in RUN/eval/scores.json.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ...config import config_from_dict
from ...errors import UnZipLoRAError
from ...metrics import METRICS
from ...run.folder import RunFolder, write_text_atomic

TOYWORLD, PAPER = "toyworld", "paper"


def is_toyworld(subject: str | None, style: str | None) -> bool:
    from ...toyworld import CLASSES, FAMILIES

    return (subject or "").strip() in CLASSES and (style or "").strip() in FAMILIES


class Evaluation:
    """What --eval scores with: the toy world's oracles (no `models`) or the paper's metric models
    ({"clip": folder, "dino": folder, "csd": folder}, any subset), loaded once per process."""

    def __init__(self, models: dict[str, str] | None = None):
        self.models = {k: str(v) for k, v in (models or {}).items() if v}
        unknown = set(self.models) - set(METRICS)
        if unknown:
            raise UnZipLoRAError(f"unknown metric {sorted(unknown)[0]!r}; choose from {', '.join(METRICS)}")
        self._encoders: dict | None = None

    @property
    def kind(self) -> str:
        return PAPER if self.models else TOYWORLD

    def check(self, rows: list[tuple[str, str | None, str | None]]) -> None:
        """Refuse, before any work, toy-world scoring of rows that are not toy-world images.
        `rows`: (id, subject, style) of each row."""
        if self.kind == PAPER:
            return
        other = [row_id for row_id, subject, style in rows if not is_toyworld(subject, style)]
        if other:
            shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
            what = (f"row {shown} is not a toy-world image" if len(other) == 1
                    else f"rows {shown} are not toy-world images")
            raise UnZipLoRAError(f"--eval: {what} (subject and style not one of the world's classes and fill "
                                 "families); the paper's metrics score any image: give --dino FOLDER, --csd FOLDER "
                                 "and --clip FOLDER (any of them)")

    def key(self, run: RunFolder) -> str:
        """What a row's scores depend on: the run (its creation time), the scorer, the sampling."""
        parts = [self.kind, sorted(self.models.items()), run.manifest.created, run.manifest.config.to_dict()["sample"]]
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def score(self, run_path: Path, scores_file: Path) -> dict[str, float]:
        """Generate a row's evaluation images into RUN/eval/, score them, write scores_file."""
        run = RunFolder.open(run_path)
        config = run.manifest.config
        from ...core.data import load_image

        image = load_image(run.path / "input.png")
        work = scores_file.parent
        if self.kind == TOYWORLD:
            values = self._toyworld(run.path, image, config, work)
        else:
            values = self._paper(run.path, image, config, work)
        scores = {name: float(np.mean(v)) for name, v in values.items() if len(v)}
        write_text_atomic(scores_file, json.dumps({"key": self.key(run), "kind": self.kind, "scores": scores,
                                                   "per_image": values}, indent=2))
        return scores

    @staticmethod
    def _toyworld(run_path: Path, image, config, work: Path) -> dict[str, list[float]]:
        from ...bench.quality import score_run

        values, _ = score_run(run_path, None, image, image, None, config.prompts.subject, config.sample, work)
        return values

    def _paper(self, run_path: Path, image, config, work: Path) -> dict[str, list[float]]:
        from ...generate import generate
        from ...metrics import models as encoders
        from ...metrics.scores import evaluate

        if self._encoders is None:
            loaders = {"clip": encoders.ClipEncoder, "dino": encoders.DinoEncoder, "csd": encoders.CsdEncoder}
            self._encoders = {name: loaders[name](folder) for name, folder in self.models.items()}
        subject, style = config.prompts.subject, config.prompts.style

        def images(prompt: str, name: str, mode: str):
            from ...core.data import load_image

            return [load_image(p) for p in generate(prompt, work / name, mode, run=run_path, force=True)]

        content = images(f"A <c> {subject}", "content", "content")
        styled = images(f"A {subject} in <s> style", "style", "style")
        together = images(f"A <c> {subject} in <s> style", "together", "both")
        clip, dino, csd = (self._encoders.get(n) for n in ("clip", "dino", "csd"))
        values: dict[str, list[float]] = {}
        on_content = evaluate(content, [image], clip=clip, dino=dino, csd=csd)
        on_style = evaluate(styled, [image], clip=clip, csd=csd)
        for name, key in (("subject_dino", "dino"), ("subject_clip_i", "clip_i"), ("subject_csd", "csd_content")):
            if key in on_content:
                values[name] = [on_content[key]]
        for name, key in (("style_csd", "csd_style"), ("style_clip_i", "clip_i")):
            if key in on_style:
                values[name] = [on_style[key]]
        if clip is not None:  # the together outputs against their prompt in plain words
            values["text_clip_t"] = [evaluate(together, [image], [f"A {subject} in {style} style"], clip=clip)["clip_t"]]
        return values
