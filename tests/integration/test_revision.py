"""A run trained at a pinned revision of its base model uses that revision in every later command."""

import pytest

import unziplora.models.loading as loading
from unziplora.decompose import decompose
from unziplora.export import export_run
from unziplora.generate import generate
from unziplora.methods.merge import merge
from unziplora.models.base import BaseModel

from ..conftest import tiny_config


@pytest.fixture()
def seen(monkeypatch):
    """The revision of every base model loaded, or whose shapes were read."""
    revisions = []
    load, shapes = loading.load_pipeline, BaseModel.shapes

    def spy_load(base, *args, **kwargs):
        revisions.append(("load", base.revision))
        return load(base, *args, **kwargs)

    def spy_shapes(self):
        revisions.append(("shapes", self.revision))
        return shapes(self)

    monkeypatch.setattr(loading, "load_pipeline", spy_load)
    monkeypatch.setattr(BaseModel, "shapes", spy_shapes)
    return revisions


def test_the_revision_travels_from_decompose_to_generate_export_and_merge(tiny_base, tiny_image, tmp_path, seen):
    run = decompose(tiny_image, tmp_path / "run", tiny_config(tiny_base, **{"model.revision": "v1.0",
                                                                          "sample.seeds": [0]}), progress=False)
    assert run.manifest.revision == "v1.0" and "(revision v1.0)" in run.summary()
    generate("A <c> cat in <s> style", tmp_path / "g", "both", run=run.path, steps=1)
    export_run(run.path, "kohya", tmp_path / "k")
    merge(run.path, run.path, tmp_path / "m", "direct")
    merge(run.path, run.path, tmp_path / "z", "ziplora", steps=1)
    assert seen and all(revision == "v1.0" for _, revision in seen), seen
    assert {kind for kind, _ in seen} == {"load", "shapes"}
    seen.clear()
    generate("A <c> cat", tmp_path / "g2", "content", run=run.path, steps=1, base_model=str(tiny_base), revision="v2")
    assert seen and all(revision == "v2" for _, revision in seen)  # an explicit base model and revision win
