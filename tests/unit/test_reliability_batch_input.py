"""Batch input read strictly: every malformed input is one line naming its line; CSV and JSONL alike."""

import pytest

from unziplora.app.batch.jobs import read_jobs
from unziplora.errors import UnZipLoRAError


def refused(path, *words):
    with pytest.raises(UnZipLoRAError) as caught:
        read_jobs(path)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_a_stray_quote_is_refused_naming_its_line(tmp_path):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text('id,image,subject,style\na,a.png,cat,"sketch\nb,b.png,dog,ink\nc,c.png,cup,oil\n'
                    'd,d.png,hat,"pastel"\n')
    refused(jobs, "jobs.csv line 2", "stray")
    jobs.write_text('id,image,subject,style\na,a.png,cat,"sketch\nb,b.png,dog,ink\n')  # never closed
    refused(jobs, "jobs.csv line 2", "stray")


def test_reserved_ids_are_refused(tmp_path):
    for text in ("id,image,subject,style\nindex.html,a.png,cat,ink\n", "image,subject,style\nindex.html.png,cat,ink\n"):
        (tmp_path / "jobs.csv").write_text(text)
        refused(tmp_path / "jobs.csv", "line 2", "index.html")
    (tmp_path / "jobs.jsonl").write_text('{"id": "INDEX.HTML", "image": "a.png", "subject": "c", "style": "s"}\n')
    refused(tmp_path / "jobs.jsonl", "line 1", "INDEX.HTML")


def test_csv_and_jsonl_read_alike_with_a_bom_and_refuse_non_utf8_by_line(tmp_path):
    row = '{"image": "a.png", "subject": "cat", "style": "ink"}\n'
    (tmp_path / "jobs.jsonl").write_bytes(b"\xef\xbb\xbf" + row.encode())
    (tmp_path / "jobs.csv").write_bytes(b"\xef\xbb\xbfimage,subject,style\na.png,cat,ink\n")
    assert [j.overrides for j in read_jobs(tmp_path / "jobs.jsonl")] == \
        [j.overrides for j in read_jobs(tmp_path / "jobs.csv")]
    (tmp_path / "jobs.jsonl").write_bytes(row.encode() + b'{"image": "b.png", "subject": "caf\xe9"}\n')
    refused(tmp_path / "jobs.jsonl", "jobs.jsonl line 2", "UTF-8")
    (tmp_path / "jobs.csv").write_bytes(b"image,subject,style\na.png,cat,ink\nb.png,caf\xe9,ink\n")
    refused(tmp_path / "jobs.csv", "jobs.csv line 3", "UTF-8")


def test_duplicate_or_empty_columns_and_duplicate_keys_are_refused(tmp_path):
    jobs = tmp_path / "jobs.csv"
    for header, word in (("image,subject,style,steps,steps", "steps"), ("image,subject,style,steps,train.steps",
                                                                        "train.steps"), ("image,subject,,style", "no name")):
        jobs.write_text(f"{header}\na.png,cat,ink,5,6\n")
        refused(jobs, "line 1", word)
    lines = tmp_path / "jobs.jsonl"
    lines.write_text('{"image": "a.png", "subject": "cat", "style": "ink"}\n'
                     '{"image": "b.png", "subject": "cat", "subject": "dog", "style": "ink"}\n')
    refused(lines, "jobs.jsonl line 2", "'subject' is given twice")
