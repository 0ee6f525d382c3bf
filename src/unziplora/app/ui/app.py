"""`unziplora ui`: start the page, safe by default.

It binds 127.0.0.1 (another address only when asked), makes no public share link unless asked,
caps uploads, and serves files from the runs folder alone (Gradio's `allowed_paths`); the page
reads nothing but the runs folder, the base model and what is uploaded to it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import UnZipLoRAError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 50


def check_base_model(base_model: str) -> str:
    """The base model as runs record it (a local folder: absolute), checked before the page opens."""
    from ...models.base import BaseModel
    from ...run.settings import model_defaults

    base = BaseModel.resolve(base_model)
    model_defaults(base)  # a broken unziplora_defaults.yaml is one line now, not at the first run
    return base.source


def build_page(runs: str | Path, base_model: str | None = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB):
    """(the Page, the gradio Blocks) over `runs` and `base_model` (default: SDXL base 1.0, as every command
    that trains on the user's images; `embedded` names the toy-world model)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves this machine
    from ...config import DEFAULT_BASE_MODEL
    from .jobs import Worker
    from .layout import build_blocks
    from .page import Page
    from .runs import RunsFolder

    if max_upload_mb <= 0:
        raise UnZipLoRAError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    page = Page(RunsFolder(runs), check_base_model(base_model or DEFAULT_BASE_MODEL), Worker(),
                int(max_upload_mb * 2**20))
    return page, build_blocks(page)


def serve(runs: str | Path = "runs", base_model: str | None = None, host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, share: bool = False, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
          block: bool = True):
    """Start the page; with `block` (the command line) until Ctrl-C. Returns (page, blocks, url)."""
    try:
        import gradio as gr
    except ImportError:
        raise UnZipLoRAError("the web page needs gradio: pip install 'unziplora[ui]'") from None

    from .layout import CSS

    page, blocks = build_page(runs, base_model, max_upload_mb)
    # the system's fonts: the default theme would fetch its fonts from the web
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    blocks.queue(default_concurrency_limit=8)  # handlers only queue work; the worker runs it one at a time
    try:
        blocks.launch(
            server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True,
            inbrowser=False, allowed_paths=[str(page.runs.root)], max_file_size=int(max_upload_mb * 2**20),
            css=CSS, theme=theme, ssr_mode=False, mcp_server=False, footer_links=[], show_error=False,
        )
    except OSError as exc:  # the port is taken
        page.worker.close()
        raise UnZipLoRAError(f"cannot serve on {host}:{port} ({exc}); pass another --port") from None
    local = f"http://{host}:{blocks.server_port}/"
    if block:
        print(f"unziplora ui: {local} (runs in {page.runs.root}; Ctrl-C to stop)")
        if blocks.share_url:
            print(f"public link (anyone with it can use this page): {blocks.share_url}")
        try:
            blocks.block_thread()
        finally:
            page.worker.close(timeout=2)  # a running job stops after its step, checkpoint kept; Ctrl-C is answered in seconds
            blocks.close()
    return page, blocks, local
