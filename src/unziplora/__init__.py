"""unziplora: split one image into a content LoRA and a style LoRA (UnZipLoRA, arXiv 2412.04465).

    from unziplora import decompose, generate, resolve_config

The names below load on first use, so `import unziplora` (and the command line) stays fast.
"""

__version__ = "0.1.0"

_API = {
    "decompose": "decompose", "generate": "generate", "resolve_config": "defaults", "RunConfig": "config",
    "export_run": "export", "merge": "methods.merge", "evaluate_folder": "metrics.evaluate",
    "probe_block_roles": "probe", "run_bench": "bench", "Method": "methods", "Mode": "branch",
    "RunFolder": "runfolder", "EMBEDDED_MODEL": "demo", "demo_image": "demo", "run_demo": "demo",
    "run_batch": "batch", "batch_status": "batch",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'unziplora' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
