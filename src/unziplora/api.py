"""The Python API in one import: `from unziplora.api import decompose, generate, resolve_config`.

Each name is the function a command line command calls (docs/architecture.md).
"""

from .app.batch import batch_status, run_batch
from .bench import run_bench
from .names import Mode
from .config import RunConfig
from .decompose import decompose
from .methods import resolve_config
from .app.demo import run_demo
from .models.embedded import EMBEDDED_MODEL, demo_image
from .export import export_run
from .generate import generate
from .methods import Method
from .methods.merge import merge
from .metrics.evaluate import evaluate_folder
from .probe import probe_block_roles
from .run.folder import RunFolder

__all__ = ["EMBEDDED_MODEL", "Method", "Mode", "RunConfig", "RunFolder", "batch_status", "decompose", "demo_image",
           "evaluate_folder", "export_run", "generate", "merge", "probe_block_roles", "resolve_config",
           "run_batch", "run_bench", "run_demo"]
