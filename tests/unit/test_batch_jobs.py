"""Batch jobs, shards, the summary and the results page, without a model."""

import json
import os

import pytest

from unziplora.app.batch import Shard, parse_shard, read_jobs
from unziplora.app.batch.html import render_index
from unziplora.app.batch.jobs import decompose_aliases
from unziplora.app.batch.state import Layout, RowStatus, Status
from unziplora.app.batch.summary import summary_table, totals
from unziplora.app.cli import build_parser
from unziplora.config import user_options
from unziplora.errors import UnZipLoRAError


def write(path, text):
    path.write_text(text)
    return path


def test_csv_columns_are_decompose_options_or_config_keys(tmp_path):
    jobs = read_jobs(write(tmp_path / "jobs.csv",
                           "image,subject,Style,steps,base_model,gradient-checkpointing,train.seed,sample.seeds,method\n"
                           "photos/cat.png,cat,watercolor,800,,yes,3,\"[0, 5]\",b-lora\n"
                           "mug.jpg,cup,oil painting,,,,,,\n"))
    first, second = jobs
    assert first.id == "cat" and first.image == tmp_path / "photos" / "cat.png" and first.method == "b-lora"
    assert first.overrides == {"prompts.subject": "cat", "prompts.style": "watercolor", "train.steps": 800,
                               "train.gradient_checkpointing": True, "train.seed": 3, "sample.seeds": [0, 5]}
    assert second.id == "mug" and second.overrides == {"prompts.subject": "cup", "prompts.style": "oil painting"}
    assert first.error is None and second.error is None and second.method is None


def test_every_decompose_option_is_a_batch_flag_and_a_column():
    parser = build_parser()
    batch = parser._subparsers._group_actions[0].choices["batch"]
    decompose = parser._subparsers._group_actions[0].choices["decompose"]
    batch_flags = {s for a in batch._actions for s in a.option_strings}
    decompose_flags = {s for a in decompose._actions for s in a.option_strings}
    assert decompose_flags <= batch_flags
    aliases = decompose_aliases()
    for opt in user_options():
        assert aliases[opt.flag] == opt.key and f"--{opt.flag}" in decompose_flags


def test_a_bad_value_fails_its_row_only_and_a_bad_header_fails_the_file(tmp_path):
    jobs = read_jobs(write(tmp_path / "jobs.csv", "id,image,subject,style,steps,method\n"
                                                  "a,a.png,cat,sketch,many,\nb,b.png,cat,sketch,5,\nc,,cat,sketch,,\n"
                                                  "d,d.png,cat,sketch,,unzip\n"))
    assert [j.id for j in jobs] == ["a", "b", "c", "d"]
    assert "line 2: steps must be an integer, got 'many'" in jobs[0].error
    assert jobs[1].error is None and jobs[1].overrides["train.steps"] == 5
    assert "no image" in jobs[2].error and "unknown method 'unzip'" in jobs[3].error
    with pytest.raises(UnZipLoRAError, match="unknown column 'stpes'"):
        read_jobs(write(tmp_path / "typo.csv", "image,stpes\na.png,5\n"))
    with pytest.raises(UnZipLoRAError, match="line 2 and dup.csv line 3 both have the id 'Cat'"):
        read_jobs(write(tmp_path / "dup.csv", "image,subject\nx/cat.png,cat\ny/Cat.jpg,cat\n"))
    with pytest.raises(UnZipLoRAError, match="cannot name a run folder"):
        read_jobs(write(tmp_path / "bad_id.csv", "id,image\n../up,a.png\n"))
    with pytest.raises(UnZipLoRAError, match="no image column"):
        read_jobs(write(tmp_path / "noimage.csv", "subject,style\ncat,sketch\n"))


def test_jsonl_and_a_folder_with_sidecars_read_like_the_csv(tmp_path):
    from_jsonl = read_jobs(write(tmp_path / "jobs.jsonl", json.dumps(
        {"image": "photos/cat.png", "subject": "cat", "style": "watercolor", "steps": 800}) + "\n\n" + json.dumps(
        {"id": "m", "image": "photos/mug.png", "subject": "cup", "style": "oil", "train.seed": 2}) + "\n"))
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat.png", "mug.png", "notes.md"):
        (photos / name).write_bytes(b"")
    write(photos / "cat.yaml", "subject: cat\nstyle: watercolor\nsteps: 800\n")
    write(photos / "mug.json", '{"id": "m", "subject": "cup", "style": "oil", "train.seed": 2}')
    from_folder = read_jobs(photos)
    for a, b in zip(from_jsonl, from_folder):
        assert (a.id, a.image, a.overrides) == (b.id, b.image, b.overrides)
    assert len(from_folder) == 2  # notes.md is no image
    write(photos / "cat.yaml", "subject: cat\nsteps: 800\nlearning_rate: 1\n")
    with pytest.raises(UnZipLoRAError, match="cat.yaml: unknown column 'learning_rate'"):
        read_jobs(photos)


@pytest.mark.parametrize("rows", [1, 6, 13])
@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_shards_cover_every_row_exactly_once(rows, count):
    table = list(range(rows))
    taken = [r for i in range(count) for r in Shard(i, count).take(table)]
    assert sorted(taken) == table
    for processes in (1, 2, 4):  # --shard i/n, split again among accelerate's processes
        taken = [r for i in range(count) for p in range(processes)
                 for r in Shard(i, count).split(p, processes).take(table)]
        assert sorted(taken) == table


def test_shard_text_is_checked():
    assert parse_shard("3/16") == Shard(3, 16)
    for bad in ("16/16", "-1/4", "1", "a/b", "0/0"):
        with pytest.raises(UnZipLoRAError, match="--shard"):
            parse_shard(bad)


def statuses(tmp_path):
    jobs = read_jobs(write(tmp_path / "jobs.csv", "id,image,subject,style\na,a.png,cat,x\nb,b.png,cat,x\n"
                                                  "c,c<1>.png,cat,x\nd,d.png,cat,x\n"))
    return [RowStatus(jobs[0], Status.DONE, 10.0, scores={"dino": 0.5}),
            RowStatus(jobs[1], Status.DONE, 30.0, scores={"dino": 0.7}),
            RowStatus(jobs[2], Status.FAILED, 1.0, "image c<1>.png is not a readable image"),
            RowStatus(jobs[3], Status.PENDING, detail="interrupted; resumes after step 200")]


def test_summary_counts_and_mean_std(tmp_path):
    rows = statuses(tmp_path)
    t = totals(rows)
    assert t.counts == {"done": 2, "running": 0, "failed": 1, "pending": 1}
    assert t.seconds == (20.0, 10.0) and t.scores["dino"][:2] == pytest.approx((0.6, 0.1))
    table = summary_table(rows, processes=2)
    assert "4 rows: 2 done, 0 running, 1 failed, 1 pending" in table
    assert "time per image: 20.0 s ± 10.0 s (2 runs)" in table and "dino: 0.600 ± 0.100 (2 rows)" in table
    assert "left: 1 rows, about 20.0 s of one process, 10.0 s with 2 processes" in table
    short = summary_table(rows, max_rows=2)  # the rows not done come first
    assert "c<1>.png" in short and "resumes after step 200" in short and "... and 2 more rows" in short


def test_index_html_escapes_and_lists_every_row(tmp_path):
    page = render_index(Layout(tmp_path / "runs"), statuses(tmp_path))
    assert page.count("<tr>") == 5  # header + 4 rows
    assert "c&lt;1&gt;.png is not a readable image" in page and "c<1>" not in page
    assert "2 done" in page and "dino" in page and "0.700" in page


def test_status_is_read_from_the_folder(tmp_path):
    from unziplora.app.batch.state import read_statuses, write_failure
    from unziplora.run.lock import WorkLock

    jobs = read_jobs(write(tmp_path / "jobs.csv", "image,subject,style\na.png,cat,x\nb.png,cat,x\nc.png,cat,x\n"
                                                  "d.png,cat,x\ne.png,cat,x\n"))
    layout = Layout(tmp_path / "runs")
    (layout.out / "a.partial").mkdir(parents=True)  # killed before its first checkpoint
    hidden = layout.out / ".b.partial-x1y2"  # a baseline's work folder, its writer alive (this process)
    hidden.mkdir()
    lock = WorkLock(hidden)
    lock.acquire()
    (layout.out / ".c.partial-dead").mkdir()  # a dead writer's (no lock): not running
    write_failure(layout, jobs[3], "image d.png is not a readable image", "decompose", 0.5, "process 0 of 1")
    try:
        found = {s.job.id: s for s in read_statuses(layout, jobs)}
    finally:
        lock.release()
    assert found["a"].status is Status.PENDING and found["a"].detail == "interrupted before its first checkpoint"
    assert found["b"].status is Status.RUNNING and f"pid {os.getpid()}" in found["b"].detail
    assert found["c"].status is Status.PENDING and found["e"].status is Status.PENDING
    assert found["d"].status is Status.FAILED and found["d"].error == "image d.png is not a readable image"
