"""`unziplora ui` is safe by default: localhost only, no share link, capped uploads, and the server
hands out files from the runs folder alone."""

import socket

import pytest

from unziplora.app.cli import build_parser, main
from unziplora.decompose import decompose

from ..conftest import tiny_config

pytest.importorskip("gradio", reason="the web page needs gradio: pip install -e '.[ui]'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_command_defaults_are_safe():
    args = build_parser().parse_args(["ui"])
    assert (args.host, args.port, args.share, args.runs, args.base_model) == ("127.0.0.1", 7860, False, "runs", None)
    assert args.max_upload_mb == 50


def test_a_wrong_base_model_is_one_line_before_the_page_opens(tmp_path, capsys):
    assert main(["ui", "--runs", str(tmp_path / "runs"), "--base-model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: base model path") and "\n" not in err


@pytest.fixture(scope="module")
def served(tiny_base, tiny_image, tmp_path_factory):
    from unziplora.app.ui.app import serve

    runs = tmp_path_factory.mktemp("app") / "runs"
    decompose(tiny_image, runs / "cat", tiny_config(tiny_base, **{"train.steps": 2}), progress=False)
    page, blocks, url = serve(runs, str(tiny_base), port=free_port(), block=False, max_upload_mb=0.01)
    yield page, blocks, url
    page.worker.close()
    blocks.close()


def test_it_binds_localhost_without_a_share_link(served):
    page, blocks, url = served
    assert url.startswith("http://127.0.0.1:")
    assert blocks.server_name == "127.0.0.1"
    assert not blocks.share and blocks.share_url is None


def test_files_come_from_the_runs_folder_only(served, tiny_base, tmp_path):
    import httpx

    page, blocks, url = served
    inside = page.runs.root / "cat" / "thumbnail.png"
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the page")
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get(f"gradio_api/file={inside}").status_code == 200
        for outside in (secret, tiny_base / "model_index.json", page.runs.root / ".." / "runs" / ".." / "x"):
            response = client.get(f"gradio_api/file={outside}")
            assert response.status_code in (403, 404), outside
            assert b"not for the page" not in response.content


def test_uploads_over_the_cap_are_refused_by_the_server(served):
    import httpx

    page, blocks, url = served
    big = b"\x89PNG" + b"0" * 20_000  # the cap is 0.01 MB
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("gradio_api/upload", files={"files": ("big.png", big, "image/png")})
        assert response.status_code == 413, response.text
        small = client.post("gradio_api/upload", files={"files": ("small.png", b"\x89PNG" + b"0" * 100, "image/png")})
        assert small.status_code == 200


def test_a_taken_port_is_one_line(served, tmp_path):
    from unziplora.errors import UnZipLoRAError
    from unziplora.app.ui.app import serve

    page, blocks, url = served
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    with pytest.raises(UnZipLoRAError, match=f"cannot serve on 127.0.0.1:{port}"):
        serve(tmp_path / "runs", page.base_model, port=port, block=False)
